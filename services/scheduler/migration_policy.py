"""Where a cold model should start when its best worker is busy (pure).

For a cold model M the scheduler compares, per candidate:

- **wait**: a busy worker W frees when its running generations end (upper bound: their
  remaining tokens at the measured decode pace), then M loads there;
- **elsewhere**: a free worker F loads M (its own startup estimate, typically slower: F's node
  holds no fast copy of M);
- **migrate**: the generations running on W move to a free worker D where their model A loads
  fast (token recomputation: D loads A, prefills every context while W keeps decoding, catch-up
  rounds shrink the gap, then W stops and D continues), and M loads on W.

It returns the option with the smallest startup time for M, among those whose harm to the
migrated requests stays within bounds (the pause a migration puts into their token streams, and
how many requests move at once). Nothing here talks to NATS or Redis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

OptionKind = Literal["wait", "elsewhere", "migrate"]


@dataclass(frozen=True)
class Running:
    """One generation on a busy worker."""

    request_id: str
    context_tokens: int  # prompt + tokens generated so far
    remaining_tokens: int  # at most this many more (max_tokens - generated)


@dataclass(frozen=True)
class BusyWorker:
    worker_id: str
    model: str  # the model its instance serves
    running: tuple[Running, ...]
    startup_s: float  # estimated startup of the cold model here, once the worker is free


@dataclass(frozen=True)
class FreeWorker:
    worker_id: str
    startup_s: Mapping[str, float] = field(default_factory=dict)  # model -> startup estimate


@dataclass(frozen=True)
class Costs:
    """Measured (or assumed) speeds of the model being migrated, and the harm bounds."""

    prefill_s_per_token: float  # recomputation speed on the destination
    decode_s_per_token: float  # per request, while the source keeps decoding
    round_overhead_s: float = 0.02  # one round trip: tokens to the destination, its ack
    target_gap_tokens: int = 4  # stop the rounds once at most this many tokens are behind
    max_rounds: int = 8
    max_pause_s: float = 0.5  # harm bound: the stall a migrated stream may see
    max_moved: int = 16  # harm bound: generations moved in one migration


@dataclass(frozen=True)
class MigrationPlan:
    """How a migration of one worker's generations would go (times in seconds)."""

    rounds: int  # catch-up rounds after the first full recomputation
    recompute_s: float  # destination prefill of every context, first pass
    migrate_s: float  # from the destination having the model to the source being free
    pause_s: float  # the stall each migrated stream sees at the hand-over
    final_gap_tokens: int


@dataclass(frozen=True)
class Option:
    kind: OptionKind
    worker_id: str  # where the cold model starts
    startup_s: float
    destination: str = ""  # migrate: where the running generations go
    moved: tuple[str, ...] = ()  # migrate: their request ids
    pause_s: float = 0.0


def plan_migration(running: Sequence[Running], costs: Costs) -> MigrationPlan:
    """Rounds of token recomputation until the gap is small (or the round limit), then the
    hand-over: the source stops, the destination recomputes the last gap and continues."""
    n = len(running)
    p, d = costs.prefill_s_per_token, costs.decode_s_per_token
    recompute = sum(r.context_tokens for r in running) * p + costs.round_overhead_s
    elapsed = recompute
    # Tokens each request produced on the source while the destination was busy, capped by
    # what it still had to generate.
    step = recompute
    gap = _produced(running, step, d)
    rounds = 0
    while gap > costs.target_gap_tokens * n and rounds < costs.max_rounds:
        step = gap * p + costs.round_overhead_s
        elapsed += step
        gap = _produced(running, step, d)
        rounds += 1
    pause = gap * p + costs.round_overhead_s + d  # final delta, then the first new token
    return MigrationPlan(
        rounds=rounds,
        recompute_s=recompute,
        migrate_s=elapsed + pause,
        pause_s=pause,
        final_gap_tokens=gap,
    )


def _produced(running: Sequence[Running], seconds: float, decode_s: float) -> int:
    if decode_s <= 0:
        return 0
    return sum(min(r.remaining_tokens, int(seconds / decode_s)) for r in running)


def options(
    busy: Sequence[BusyWorker],
    free: Sequence[FreeWorker],
    cold_model: str,
    costs: Mapping[str, Costs],
) -> list[Option]:
    """Every allowed way to start ``cold_model``, best (smallest startup) first.

    ``costs`` holds, per model being served on a busy worker, the speeds used to plan its
    migration; a model without costs is never migrated. A migration needs a free destination
    other than the cold model's own worker, and stays within the harm bounds.
    """
    out: list[Option] = []
    for f in free:
        if cold_model in f.startup_s:
            out.append(Option("elsewhere", f.worker_id, f.startup_s[cold_model]))
    for w in busy:
        c = costs.get(w.model)
        if c is not None:
            until_free = max((r.remaining_tokens for r in w.running), default=0)
            out.append(Option("wait", w.worker_id, until_free * c.decode_s_per_token + w.startup_s))
        if c is None or not w.running or len(w.running) > c.max_moved:
            continue
        plan = plan_migration(w.running, c)
        if plan.pause_s > c.max_pause_s:
            continue
        for dest in free:
            load = dest.startup_s.get(w.model)
            if load is None:
                continue
            out.append(
                Option(
                    "migrate",
                    w.worker_id,
                    load + plan.migrate_s + w.startup_s,
                    destination=dest.worker_id,
                    moved=tuple(r.request_id for r in w.running),
                    pause_s=plan.pause_s,
                )
            )
    # Ties: the option that disturbs least (elsewhere, then wait, then migrate), then by id.
    order = {"elsewhere": 0, "wait": 1, "migrate": 2}
    return sorted(out, key=lambda o: (o.startup_s, order[o.kind], o.worker_id, o.destination))


def choose(
    busy: Sequence[BusyWorker],
    free: Sequence[FreeWorker],
    cold_model: str,
    costs: Mapping[str, Costs],
) -> Option | None:
    """The best option (see `options`); None when there is none at all."""
    ranked = options(busy, free, cold_model, costs)
    return ranked[0] if ranked else None


def kv_cache_bytes(
    tokens: int, *, layers: int, kv_heads: int, head_dim: int, dtype_bytes: int
) -> int:
    """Bytes of the KV cache of ``tokens`` tokens (keys and values, every layer): what a
    KV-cache migration would have to send instead of the token ids."""
    return 2 * layers * kv_heads * head_dim * dtype_bytes * tokens
