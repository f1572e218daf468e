"""The simulator passes the policies only the workers and models that can matter
(`views`, `autoscale_view`); passing everything must give the very same simulation."""

from __future__ import annotations

import random

import pytest

from benchmarks.simulator import Scenario, simulate
from benchmarks.simulator.cluster import GB, Hardware
from benchmarks.simulator.llms import model_fleet
from benchmarks.simulator.workloads import gamma_zipf
from services.scheduler.autoscaler import Scaling
from services.scheduler.placement import NodeView, WorkerView, round_robin


@pytest.mark.parametrize("system", ["sllm", "ray_serve_cache", "ray_serve"])
@pytest.mark.parametrize(("nodes", "rate", "keep_alive"), [(3, 2.0, 10.0), (6, 3.0, 30.0)])
def test_pruned_inputs_give_the_same_decisions_as_the_whole_cluster(
    system: str, nodes: int, rate: float, keep_alive: float
) -> None:
    models = model_fleet(40)
    arrivals = gamma_zipf(models, duration_s=900, rate=rate, seed=nodes)
    sc = dict(
        nodes=nodes,
        hardware=Hardware(gpus=4, dram_bytes=int(150 * GB), ssd_bytes=int(600 * GB)),
        models=models,
        arrivals=arrivals,
        system=system,
        scaling=Scaling(0, 3, 8, keep_alive),
    )
    pruned = simulate(Scenario(**sc))  # type: ignore[arg-type]
    exact = simulate(Scenario(**sc, exact=True))  # type: ignore[arg-type]
    assert pruned.cold_starts == exact.cold_starts
    assert pruned.requests == exact.requests
    assert pruned.gpu_seconds == exact.gpu_seconds
    assert pruned.autoscaler_steps == exact.autoscaler_steps
    if system == "sllm":
        # The scenario exercises the busy-worker policy, not only plain placements.
        assert pruned.waits + pruned.migrations > 0


def test_round_robin_window_picks_what_the_full_rotation_picks() -> None:
    from benchmarks.simulator.cluster import build_cluster
    from benchmarks.simulator.systems import SYSTEMS
    from benchmarks.simulator.views import Views

    rng = random.Random(0)
    nodes = build_cluster(7, Hardware(gpus=3), dram_tier=False, ssd_cache=True)
    views = Views(nodes, SYSTEMS["ray_serve_cache"])
    for _ in range(200):
        for n in nodes:
            for w in n.workers:
                w.instance = "busy" if rng.random() < 0.5 else ""
            n.recount()
        turn = rng.randrange(1000)
        full = round_robin("m", views.workers(nodes), [NodeView(n.node_id) for n in nodes], turn)
        window, t = views.round_robin_window(turn)
        one = round_robin("m", window, [NodeView(n.node_id) for n in nodes], t)
        assert [e.worker_id for e in one[:1]] == [e.worker_id for e in full[:1]]
    assert isinstance(window[0] if window else WorkerView("x", "y", True), WorkerView)
