"""The inputs of the migration policy, from what the scheduler sees (pure).

A cold start asks `contenders` first: the busy workers where the cold model would start
sooner than on any free worker. Only when there are some does it ask those workers what they
are running (``worker.running``), and `weigh` turns the answers into the policy's inputs
(`migration_policy.BusyWorker`, `FreeWorker`, `Costs`) and ranks the options. Nothing here
talks to NATS or Redis.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from libs.protocol.messages import RunningReply

from .migration_policy import BusyWorker, Costs, FreeWorker, Option, Running, options
from .placement import Estimate, NodeView, SourceTier, WorkerView, rank


@dataclass(frozen=True)
class Bounds:
    """The harm bounds of a migration for a cold start, and the rounds it may take."""

    max_pause_s: float = 0.5
    max_moved: int = 16
    max_rounds: int = 4
    target_gap: int = 2


def contenders(
    model: str,
    workers: Sequence[WorkerView],
    nodes: Sequence[NodeView],
    *,
    default_bytes: int,
    priors: Mapping[SourceTier, float],
    ranked: Sequence[Estimate] | None = None,
) -> tuple[list[Estimate], Estimate | None]:
    """The busy workers where ``model`` would start sooner than on the best free worker (as
    if they were free; best first), and that best free worker (None: no free worker).

    ``ranked``: the free workers' `rank` for ``model``, if the caller has it already."""
    free = (
        list(ranked)
        if ranked is not None
        else rank(model, workers, nodes, default_bytes=default_bytes, priors=priors)
    )
    best = free[0] if free else None
    busy = [replace(w, free=True) for w in workers if not w.free]
    if best is None or not busy:
        return [], best
    as_free = rank(model, busy, nodes, default_bytes=default_bytes, priors=priors)
    return [e for e in as_free if e.seconds < best.seconds], best


def costs_of(reply: RunningReply, bounds: Bounds) -> Costs | None:
    """The migration costs of a busy worker's generations, from the speeds it measured: the
    prefill rate (seconds per token over its generations' prefills) and the median decode
    pace. None when it has measured neither yet: such a worker is never migrated (nor waited
    for), since nothing says how long that would take."""
    prefilled = [
        (g.prefill_tokens, g.prefill_s)
        for g in reply.generations
        if g.prefill_s is not None and g.prefill_tokens > 0
    ]
    paces = [g.decode_s_per_token for g in reply.generations if g.decode_s_per_token is not None]
    if not prefilled or not paces:
        return None
    prefill = sum(s for _, s in prefilled) / sum(n for n, _ in prefilled)
    return Costs(
        prefill_s_per_token=prefill,
        decode_s_per_token=statistics.median(paces),
        target_gap_tokens=bounds.target_gap,
        max_rounds=bounds.max_rounds,
        max_pause_s=bounds.max_pause_s,
        max_moved=bounds.max_moved,
    )


def weigh(
    model: str,
    busy: Sequence[tuple[Estimate, RunningReply]],
    workers: Sequence[WorkerView],
    nodes: Sequence[NodeView],
    *,
    default_bytes: int,
    priors: Mapping[SourceTier, float],
    bounds: Bounds,
    ranked: Sequence[Estimate] | None = None,
) -> list[Option]:
    """Every way to start ``model`` (see `migration_policy.options`), best first.

    ``busy``: each contender with what its worker said it runs. A contender counts only with a
    ready instance of another model and generations under way (an idle instance is the
    autoscaler's to preempt, a loading one cannot move). Free workers get estimates for the
    cold model (``ranked``, if the caller has its `rank` already) and for every model a
    migration would move onto them.
    """
    candidates: list[BusyWorker] = []
    costs: dict[str, Costs] = {}
    for est, reply in busy:
        if reply.status != "ready" or not reply.generations or reply.model == model:
            continue
        c = costs_of(reply, bounds)
        if c is None:
            continue
        costs[reply.model] = c  # one worker's figures stand for its model's
        running = tuple(
            Running(g.request_id, g.context_tokens, g.remaining_tokens) for g in reply.generations
        )
        candidates.append(BusyWorker(est.worker_id, reply.model, running, est.seconds))
    needed = {model, *(b.model for b in candidates)}
    startup: dict[str, dict[str, float]] = {w.worker_id: {} for w in workers if w.free}
    for m in sorted(needed):
        estimates = (
            ranked
            if m == model and ranked is not None
            else rank(m, workers, nodes, default_bytes=default_bytes, priors=priors)
        )
        for e in estimates:
            startup[e.worker_id][m] = e.seconds
    free = [FreeWorker(wid, s) for wid, s in sorted(startup.items())]
    return options(candidates, free, model, costs)
