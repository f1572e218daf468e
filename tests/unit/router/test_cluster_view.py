"""`cluster_view.assemble`: the ``GET /v1/cluster`` snapshot from plain records."""

from __future__ import annotations

import pytest

from libs.protocol.messages import DeploymentSpec
from libs.protocol.state import InstanceRecord, Locality, NodeRecord, WorkerRecord
from services.router.cluster_schema import ClusterOut, EventOut
from services.router.cluster_view import ClusterRecords, RouterKnows, assemble

pytestmark = pytest.mark.unit

NOW = 1_000.0
GIB = 1 << 30


def _instance(
    iid: str, model: str, worker: str, node: str, status: str, at: float
) -> InstanceRecord:
    return InstanceRecord(
        instance_id=iid,
        model=model,
        worker_id=worker,
        node_id=node,
        status=status,  # type: ignore[arg-type]
        created_at=at,
        source_tier="dram" if status == "ready" else None,
    )


def _records() -> ClusterRecords:
    return ClusterRecords(
        nodes=[
            NodeRecord(node_id="n1", ssd_dir="/s1", dram_dir="/d1", dram_capacity_bytes=8 * GIB),
            NodeRecord(node_id="n2", ssd_dir="/s2", dram_dir="/d2", dram_capacity_bytes=4 * GIB),
        ],
        localities=[
            Locality(
                node_id="n1",
                dram={"demo": 2 * GIB},
                ssd={"demo": 2 * GIB, "big": 5 * GIB},
                bandwidth={"dram": 9e9, "ssd": 2e9},
            ),
            Locality(node_id="n2"),
        ],
        workers=[
            WorkerRecord(worker_id="n1-w1", node_id="n1", device="cpu", alive=True),
            WorkerRecord(
                worker_id="n1-w0", node_id="n1", device="cpu", instance_id="i-ready", alive=True
            ),
            WorkerRecord(
                worker_id="n2-w0", node_id="n2", device="cuda:0", instance_id="i-load", alive=True
            ),
            WorkerRecord(worker_id="n2-w1", node_id="n2", device="cuda:1", alive=False),
        ],
        instances=[
            _instance("i-load", "big", "n2-w0", "n2", "loading", NOW - 4.0),
            _instance("i-ready", "demo", "n1-w0", "n1", "ready", NOW - 60.0),
            _instance("i-orphan", "demo", "gone-w", "n3", "stopping", NOW - 90.0),
        ],
        deployments=[
            DeploymentSpec(name="big", checkpoint_uri="file:///m/big", max_instances=2),
            DeploymentSpec(name="demo", checkpoint_uri="file:///m/demo", min_instances=1),
        ],
    )


def _knows() -> RouterKnows:
    return RouterKnows(
        in_flight={"i-ready": 3},
        held={"demo": 4, "big": 2},
        queued={"big": 2},
        phases={"i-load": "read", "i-ready": ""},
        requests={"demo": 17},
        instance_tokens_per_s={"i-ready": 41.234},
        model_tokens_per_s={"demo": 41.234},
        events=[EventOut(time=NOW - 1, kind="instance.ready", summary="demo ready")],
    )


def _snapshot() -> ClusterOut:
    return assemble(_records(), _knows(), now=NOW, router_id="router-1")


def test_nodes_show_each_tier_with_capacity_use_and_models() -> None:
    out = _snapshot()
    assert [n.node_id for n in out.nodes] == ["n1", "n2", "n3"]
    dram, ssd = out.nodes[0].tiers
    assert (dram.tier, dram.capacity_bytes, dram.used_bytes) == ("dram", 8 * GIB, 2 * GIB)
    assert dram.bandwidth_bytes_per_s == 9e9
    assert [(m.model, m.bytes) for m in dram.models] == [("demo", 2 * GIB)]
    # The SSD tier's capacity is not in the cluster state: unknown, not zero.
    assert (ssd.tier, ssd.capacity_bytes, ssd.used_bytes) == ("ssd", None, 7 * GIB)
    assert [m.model for m in ssd.models] == ["big", "demo"]
    empty = out.nodes[1].tiers
    assert [(t.used_bytes, t.models) for t in empty] == [(0, []), (0, [])]


def test_workers_carry_their_instances_with_the_routers_counts() -> None:
    n1, n2, _ = _snapshot().nodes
    assert [(w.worker_id, w.status) for w in n1.workers] == [("n1-w0", "busy"), ("n1-w1", "free")]
    (ready,) = n1.workers[0].instances
    assert (ready.model, ready.status, ready.source_tier) == ("demo", "ready", "dram")
    assert (ready.in_flight, ready.tokens_per_s) == (3, 41.23)
    assert n1.workers[1].instances == []
    assert [(w.worker_id, w.status, w.device) for w in n2.workers] == [
        ("n2-w0", "busy", "cuda:0"),
        ("n2-w1", "down", "cuda:1"),
    ]


def test_an_instance_whose_worker_is_gone_is_shown_under_its_node() -> None:
    orphan_node = _snapshot().nodes[2]
    assert orphan_node.registered is False
    assert orphan_node.tiers[0].capacity_bytes is None
    (worker,) = orphan_node.workers
    assert (worker.worker_id, worker.status) == ("gone-w", "unregistered")
    assert [i.instance_id for i in worker.instances] == ["i-orphan"]


def test_deployments_count_live_instances_and_demand() -> None:
    big, demo = _snapshot().deployments
    assert (big.name, big.status, big.instances, big.ready_instances) == ("big", "ready", 1, 0)
    assert (big.in_flight, big.queued, big.requests, big.tokens_per_s) == (2, 2, 0, 0.0)
    # The stopping orphan is not one of demo's instances.
    assert (demo.instances, demo.ready_instances, demo.min_instances) == (1, 1, 1)
    assert (demo.in_flight, demo.requests, demo.tokens_per_s) == (4, 17, 41.23)


def test_a_deployments_preparation_status_and_error_are_shown() -> None:
    spec = DeploymentSpec.model_validate(
        {"name": "x", "checkpoint_uri": "file:///x", "status": "failed", "error": "no config"}
        if "status" in DeploymentSpec.model_fields
        else {"name": "x", "checkpoint_uri": "file:///x"}
    )
    out = assemble(ClusterRecords(deployments=[spec]), RouterKnows(), now=NOW, router_id="r")
    (d,) = out.deployments
    expected = getattr(spec, "status", "ready"), getattr(spec, "error", "")
    assert (d.status, d.error) == expected


def test_cold_starts_are_the_loading_instances_with_their_phase() -> None:
    out = _snapshot()
    (load,) = out.cold_starts
    assert (load.model, load.instance_id, load.worker_id, load.node_id) == (
        "big",
        "i-load",
        "n2-w0",
        "n2",
    )
    assert (load.phase, load.started_at, load.elapsed_s) == ("read", NOW - 4.0, 4.0)


def test_the_snapshot_serializes_in_the_documented_shape() -> None:
    body = _snapshot().model_dump(mode="json")
    assert body["object"] == "cluster"
    assert body["time"] == NOW
    assert set(body) == {
        "object",
        "time",
        "router_id",
        "nodes",
        "deployments",
        "cold_starts",
        "events",
    }
    assert body["events"] == [{"time": NOW - 1, "kind": "instance.ready", "summary": "demo ready"}]
    instance = body["nodes"][0]["workers"][0]["instances"][0]
    assert {"instance_id", "model", "status", "source_tier", "in_flight", "tokens_per_s"} <= set(
        instance
    )
    assert ClusterOut.model_validate(body) == _snapshot()


def test_an_empty_cluster_is_an_empty_snapshot() -> None:
    out = assemble(ClusterRecords(), RouterKnows(), now=NOW, router_id="r")
    assert (out.nodes, out.deployments, out.cold_starts, out.events) == ([], [], [], [])
