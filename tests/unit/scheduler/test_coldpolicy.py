"""The migration policy's inputs from what the scheduler sees (pure): which busy workers are
worth asking, the costs their answers give, and the ranked options."""

from __future__ import annotations

import pytest

from libs.protocol.messages import RunningGeneration, RunningReply
from services.scheduler.coldpolicy import Bounds, contenders, costs_of, weigh
from services.scheduler.migration_policy import Option
from services.scheduler.placement import DEFAULT_BANDWIDTH, Estimate, NodeView, WorkerView, rank

GB = 10**9

# node-0 holds the cold model "m" in DRAM (its worker is busy with "a"); node-1 holds "a" in
# DRAM but not "m" (a registry fetch: seconds); node-2 holds nothing.
NODES = [
    NodeView("node-0", dram={"m": GB, "a": GB}),
    NodeView("node-1", dram={"a": GB}),
    NodeView("node-2"),
]


def _workers(*, busy: tuple[str, ...] = ("w0",)) -> list[WorkerView]:
    return [WorkerView(f"w{k}", f"node-{k}", f"w{k}" not in busy) for k in range(3)]


def _gen(
    rid: str = "r1",
    context: int = 100,
    remaining: int = 200,
    prefill: tuple[int, float] | None = (100, 0.1),
    pace: float | None = 0.02,
) -> RunningGeneration:
    return RunningGeneration(
        request_id=rid,
        context_tokens=context,
        remaining_tokens=remaining,
        prefill_tokens=prefill[0] if prefill else 0,
        prefill_s=prefill[1] if prefill else None,
        decode_s_per_token=pace,
    )


def _reply(*gens: RunningGeneration, model: str = "a", status: str = "ready") -> RunningReply:
    return RunningReply(
        worker_id="w0", instance_id="i-a", model=model, status=status, generations=list(gens)
    )


def _busy_w0() -> Estimate:
    """w0's estimate for "m", as a contender (the busy worker of every case below)."""
    busy, _ = contenders("m", _workers(), NODES, default_bytes=GB, priors=DEFAULT_BANDWIDTH)
    return busy[0]


def _weigh(reply: RunningReply, bounds: Bounds | None = None) -> list[Option]:
    """The options for "m" when w0 answers ``reply``."""
    return weigh(
        "m",
        [(_busy_w0(), reply)],
        _workers(),
        NODES,
        default_bytes=GB,
        priors=DEFAULT_BANDWIDTH,
        bounds=bounds or Bounds(),
    )


def test_only_busy_workers_that_beat_every_free_one_contend() -> None:
    busy, best = contenders("m", _workers(), NODES, default_bytes=GB, priors=DEFAULT_BANDWIDTH)
    assert best is not None
    assert best.worker_id in ("w1", "w2")
    assert [e.worker_id for e in busy] == ["w0"]
    assert busy[0].tier == "dram"
    assert busy[0].seconds < best.seconds
    # The model is in DRAM where a worker is free too: nobody busy is worth asking.
    nodes = [*NODES[:2], NodeView("node-2", dram={"m": GB})]
    busy, best = contenders("m", _workers(), nodes, default_bytes=GB, priors=DEFAULT_BANDWIDTH)
    assert busy == []
    assert best is not None
    assert best.worker_id == "w2"
    # No free worker at all: nothing to weigh (the autoscaler's preemption handles it).
    assert contenders(
        "m", _workers(busy=("w0", "w1", "w2")), NODES, default_bytes=GB, priors=DEFAULT_BANDWIDTH
    ) == ([], None)


def test_costs_come_from_measured_speeds_and_bounds() -> None:
    bounds = Bounds(max_pause_s=0.3, max_moved=2, max_rounds=3, target_gap=1)
    reply = _reply(
        _gen("r1", prefill=(100, 0.1), pace=0.02),
        _gen("r2", prefill=(300, 0.2), pace=0.04),
        _gen("r3", prefill=None, pace=0.03),
    )
    c = costs_of(reply, bounds)
    assert c is not None
    assert c.prefill_s_per_token == pytest.approx(0.3 / 400)
    assert c.decode_s_per_token == pytest.approx(0.03)  # the median pace
    assert (c.max_pause_s, c.max_moved, c.max_rounds, c.target_gap_tokens) == (0.3, 2, 3, 1)
    # Nothing measured yet (a generation that only just began): no costs, never migrated.
    assert costs_of(_reply(_gen(prefill=None, pace=None)), bounds) is None
    assert costs_of(_reply(_gen(pace=None)), bounds) is None


def test_a_long_generation_is_migrated_to_where_its_model_loads_fast() -> None:
    ranked = _weigh(_reply(_gen(remaining=2000)))
    best = ranked[0]
    assert (best.kind, best.worker_id, best.destination) == ("migrate", "w0", "w1")
    assert best.moved == ("r1",)
    kinds = {o.kind for o in ranked}
    assert kinds == {"migrate", "wait", "elsewhere"}
    wait = next(o for o in ranked if o.kind == "wait")
    assert wait.startup_s == pytest.approx(2000 * 0.02 + _busy_w0().seconds)


def test_a_generation_about_to_end_is_waited_for() -> None:
    ranked = _weigh(_reply(_gen(remaining=3)))
    assert (ranked[0].kind, ranked[0].worker_id) == ("wait", "w0")


def test_the_harm_bounds_rule_a_migration_out() -> None:
    many = [_gen(f"r{k}", remaining=2000) for k in range(3)]
    ranked = _weigh(_reply(*many), Bounds(max_moved=2))
    assert "migrate" not in {o.kind for o in ranked}
    # A tiny pause bound: the hand-over alone (one decode step) exceeds it.
    ranked = _weigh(_reply(_gen(remaining=2000)), Bounds(max_pause_s=0.001))
    assert "migrate" not in {o.kind for o in ranked}


@pytest.mark.parametrize(
    "reply",
    [
        _reply(_gen(), status="loading"),  # cannot move a loading instance
        _reply(),  # idle: the autoscaler's to preempt, not a busy worker
        _reply(_gen(), model="m"),  # already serves the cold model (it is not cold)
        _reply(_gen(prefill=None, pace=None)),  # nothing measured
    ],
)
def test_busy_workers_that_cannot_be_weighed_leave_only_free_workers(reply: RunningReply) -> None:
    _, best = contenders("m", _workers(), NODES, default_bytes=GB, priors=DEFAULT_BANDWIDTH)
    ranked = _weigh(reply)
    assert {o.kind for o in ranked} == {"elsewhere"}
    assert best is not None
    assert ranked[0].worker_id == best.worker_id


def test_a_ranking_the_caller_has_already_gives_the_same_contenders_and_options() -> None:
    ws = _workers()
    ranked = rank("m", ws, NODES, default_bytes=GB, priors=DEFAULT_BANDWIDTH)
    assert contenders(
        "m", ws, NODES, default_bytes=GB, priors=DEFAULT_BANDWIDTH, ranked=ranked
    ) == contenders("m", ws, NODES, default_bytes=GB, priors=DEFAULT_BANDWIDTH)
    reply = _reply(_gen(remaining=2000))
    given = weigh(
        "m",
        [(_busy_w0(), reply)],
        ws,
        NODES,
        default_bytes=GB,
        priors=DEFAULT_BANDWIDTH,
        bounds=Bounds(),
        ranked=ranked,
    )
    assert given == _weigh(reply)
    # The caller's ranking is the one used (the free workers are not ranked again).
    none = contenders("m", ws, NODES, default_bytes=GB, priors=DEFAULT_BANDWIDTH, ranked=[])
    assert none == ([], None)
