"""Autoscaling policy: how many instances each model should have, which to start, which to stop.

Pure functions over a snapshot (no NATS, no Redis), like `placement`. The scheduler's scaling
loop builds a `Snapshot` whenever something changes (demand, an instance, a deployment, a
keep-alive deadline) and carries out the `Plan`.

The rules:

* desired instances = ceil(demand / target_concurrency), within [min_instances,
  max_instances]; demand 0 gives min_instances (0: scale to zero).
* Free workers go first to models with no live instance whose requests wait (oldest wait
  first), then one at a time to the other models that want more (oldest wait first), so no
  model starves while another grows.
* A model whose requests wait with no live instance and no free worker may preempt an idle
  instance (nothing in flight) that another model does not need (above its desired count and
  its minimum), the one idle longest first, ahead of its keep-alive. Busy instances are never
  preempted.
* An instance above its model's desired count stops once idle past its keep-alive; never below
  min_instances, never while loading or busy. The worker has the last word (a conditional
  unload), so a stale view here can delay a stop but never break a request.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

StopReason = Literal["idle", "preempted"]


@dataclass(frozen=True)
class Scaling:
    """A deployment's autoscaling knobs."""

    min_instances: int = 0
    max_instances: int = 1
    target_concurrency: int = 8
    keep_alive_s: float = 300.0


@dataclass(frozen=True)
class InstanceView:
    instance_id: str
    status: Literal["loading", "ready"]
    busy: bool = False  # requests in flight, as far as the scheduler knows
    idle_since: float = 0.0  # when its last request finished (or it became ready)
    keep_until: float = 0.0  # when its keep-alive ends (math.inf: kept indefinitely)
    stopping: bool = False  # a stop is already under way


@dataclass(frozen=True)
class ModelView:
    name: str
    scaling: Scaling
    demand: int = 0  # requests the routers hold: in flight plus waiting
    queued: int = 0  # of which waiting for an instance
    waiting_since: float | None = None  # when the oldest waiting request arrived
    instances: Sequence[InstanceView] = ()

    @property
    def live(self) -> list[InstanceView]:
        return [i for i in self.instances if not i.stopping]


@dataclass(frozen=True)
class Snapshot:
    now: float
    models: Sequence[ModelView]
    free_workers: int


@dataclass(frozen=True)
class Start:
    """Start one instance of ``model`` unless it already has ``target`` live instances."""

    model: str
    target: int
    reason: Literal["demand", "min_instances"]


@dataclass(frozen=True)
class Stop:
    model: str
    instance_id: str
    reason: StopReason
    for_model: str = ""  # the model a preemption makes room for


@dataclass
class Plan:
    starts: list[Start] = field(default_factory=list)
    stops: list[Stop] = field(default_factory=list)
    desired: dict[str, int] = field(default_factory=dict)
    # Models whose requests wait with no live instance and no worker: model -> waiting since.
    starved: dict[str, float] = field(default_factory=dict)
    wake_at: float | None = None  # the next keep-alive deadline that may stop an instance


def desired_instances(demand: int, scaling: Scaling) -> int:
    """ceil(demand / target concurrency), within [min_instances, max_instances]."""
    want = math.ceil(max(demand, 0) / scaling.target_concurrency)
    return max(scaling.min_instances, min(scaling.max_instances, want))


def remaining_load_s(estimated_s: float, started_at: float, now: float) -> float:
    """Expected seconds until a load under way finishes (0 when it is overdue)."""
    return max(0.0, started_at + estimated_s - now)


def start_beside_loading(remaining_s: Sequence[float], best_new_s: float | None) -> bool:
    """Whether a waiting request gets an instance sooner from a new load (best estimate
    ``best_new_s``; None: no free worker) than from the loads already under way."""
    if best_new_s is None:
        return False
    return not remaining_s or best_new_s < min(remaining_s)


def may_take_worker(
    model: str, waiting_since: float | None, starved: Mapping[str, float], free_workers: int
) -> bool:
    """Fairness for a direct placement: ``model`` may take a free worker only if enough are
    left for every starved model that has waited longer (unknown wait: it waited least)."""
    ahead = sum(
        1
        for other, since in starved.items()
        if other != model and (waiting_since is None or since < waiting_since)
    )
    return free_workers > ahead


def plan(snap: Snapshot) -> Plan:
    """The starts and stops that bring every model towards its desired instance count."""
    out = Plan()
    for m in snap.models:
        out.desired[m.name] = desired_instances(m.demand, m.scaling)
    unmet = _allocate(snap, out)
    by_name = {m.name: m for m in snap.models}
    cold = sorted(
        (by_name[s.model] for s in unmet if s.target == 1 and by_name[s.model].demand > 0),
        key=lambda m: (_since(m, snap.now), m.name),
    )
    for m in cold:
        out.starved[m.name] = _since(m, snap.now)
    freeing = sum(1 for m in snap.models for i in m.instances if i.stopping)
    surplus = {m.name: len(m.live) - out.desired[m.name] for m in snap.models}
    _preempt(snap, out, cold[freeing:], surplus)
    _expire(snap, out, surplus)
    return out


def _since(m: ModelView, now: float) -> float:
    return m.waiting_since if m.waiting_since is not None else now


def _allocate(snap: Snapshot, out: Plan) -> list[Start]:
    """Hand the free workers out; returns the starts that got none."""
    wanted: list[tuple[tuple[int, int, float, str], Start]] = []
    for m in snap.models:
        have = len(m.live)
        since = m.waiting_since if m.waiting_since is not None else math.inf
        for target in range(have + 1, out.desired[m.name] + 1):
            cold = have == 0 and target == 1
            reason: Literal["demand", "min_instances"] = (
                "min_instances" if target <= m.scaling.min_instances else "demand"
            )
            key = (0 if cold else 1, target - have, since, m.name)
            wanted.append((key, Start(m.name, target, reason)))
    wanted.sort(key=lambda kv: kv[0])
    free = max(snap.free_workers, 0)
    out.starts.extend(s for _, s in wanted[:free])
    return [s for _, s in wanted[free:]]


def _preempt(
    snap: Snapshot, out: Plan, waiting: Sequence[ModelView], surplus: dict[str, int]
) -> None:
    """One idle, unneeded instance (idle longest first) per cold model left without a worker."""
    if not waiting:
        return
    victims = sorted(
        (
            (i.idle_since, i.instance_id, m.name)
            for m in snap.models
            for i in m.live
            if i.status == "ready" and not i.busy
        ),
    )
    for model in waiting:
        for k, (_, iid, owner) in enumerate(victims):
            if owner != model.name and surplus[owner] > 0:
                surplus[owner] -= 1
                out.stops.append(Stop(owner, iid, "preempted", for_model=model.name))
                del victims[k]
                break
        else:
            return


def _expire(snap: Snapshot, out: Plan, surplus: dict[str, int]) -> None:
    """Stop surplus instances whose keep-alive has ended; note the next deadline."""
    taken = {s.instance_id for s in out.stops}
    for m in snap.models:
        left = surplus[m.name]
        if left <= 0:
            continue
        idle = sorted(
            (max(i.keep_until, i.idle_since), i.instance_id)
            for i in m.live
            if i.status == "ready" and not i.busy and i.instance_id not in taken
        )
        for deadline, iid in idle:
            if left <= 0:
                break
            if deadline <= snap.now:
                out.stops.append(Stop(m.name, iid, "idle"))
                left -= 1
            elif math.isfinite(deadline):
                out.wake_at = deadline if out.wake_at is None else min(out.wake_at, deadline)
                break
