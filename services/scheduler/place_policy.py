"""How a placement request is answered: with an instance that is ready, by waiting for a load
under way, by starting another instance beside it, by a cold start, or by "not your turn yet".

Pure, like the other policies (no NATS, no Redis): the scheduler reads one snapshot, asks
`decide`, and carries the answer out (`place_handler`). The rules:

* A ready instance answers at once (the first one).
* With loads under way, a request waits for the one expected to finish first, unless a new
  instance on the best free worker would be ready sooner than every one of them, the model
  may have another instance (``max_instances``) and may take a free worker (fairness across
  models, `autoscaler.may_take_worker`). A load with no estimate is assumed to end soon.
* With no live instance, the model cold-starts, unless other models have waited longer for a
  free worker than it (and as many free workers as they need are not left): it is then told to
  come back (the autoscaler starts it when its turn comes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .autoscaler import may_take_worker, start_beside_loading


@dataclass(frozen=True)
class Loading:
    """A load under way: its instance and the seconds it is expected to take still."""

    instance_id: str
    remaining_s: float


@dataclass(frozen=True)
class PlaceView:
    """What the decision needs to know of one model and the cluster."""

    model: str
    max_instances: int
    ready: Sequence[str] = ()  # ready instances, in record order
    loading: Sequence[Loading] = ()
    free_workers: int = 0
    waiting_since: float | None = None  # when the model's oldest waiting request came
    # Models the autoscaler could not give a worker: model -> waiting since.
    starved: Mapping[str, float] = field(default_factory=dict)
    best_new_s: float | None = None  # startup estimate on the best free worker (None: none)


@dataclass(frozen=True)
class UseInstance:
    """Answer with this instance (ready, or loading and ready in about ``remaining_s``)."""

    instance_id: str
    remaining_s: float = 0.0


@dataclass(frozen=True)
class StartBeside:
    """Start another instance on the best free worker: it beats every load under way."""


@dataclass(frozen=True)
class ColdStart:
    """The model has no live instance: start its first."""


@dataclass(frozen=True)
class WaitTurn:
    """Not this model's turn for a free worker: ``waiting_models`` have waited longer."""

    waiting_models: int


Decision = UseInstance | StartBeside | ColdStart | WaitTurn


def decide(view: PlaceView) -> Decision:
    """The answer to a placement request of ``view.model``."""
    if view.ready:
        return UseInstance(view.ready[0])
    if view.loading:
        remaining = [load.remaining_s for load in view.loading]
        if _start_beside(view, remaining):
            return StartBeside()
        soonest = min(range(len(view.loading)), key=lambda k: remaining[k])
        return UseInstance(view.loading[soonest].instance_id, remaining[soonest])
    if _my_turn(view):
        return ColdStart()
    return WaitTurn(len(view.starved))


def _start_beside(view: PlaceView, remaining: Sequence[float]) -> bool:
    if len(view.loading) >= view.max_instances or min(remaining) <= 0.0:
        return False
    if not may_take_worker(view.model, view.waiting_since, view.starved, view.free_workers):
        return False
    return start_beside_loading(remaining, view.best_new_s)


def _my_turn(view: PlaceView) -> bool:
    """Fairness across models: a free worker goes to the model that has waited longest."""
    if not view.starved or set(view.starved) == {view.model}:
        return True
    return may_take_worker(view.model, view.waiting_since, view.starved, view.free_workers)
