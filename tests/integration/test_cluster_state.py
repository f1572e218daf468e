"""ClusterState against a real Redis: records, and atomic worker reservation."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from libs.cluster import ClusterState
from libs.protocol import Keys
from libs.protocol.messages import DeploymentSpec
from libs.protocol.state import InstanceRecord

pytestmark = pytest.mark.integration


async def test_deployments_roundtrip(state: ClusterState) -> None:
    spec = DeploymentSpec(name="org/model-a", checkpoint_uri="file:///m", max_instances=2)
    assert await state.put_deployment(spec) is True
    assert await state.put_deployment(spec) is False  # update, not create
    got = await state.get_deployment("org/model-a")
    assert got is not None
    assert got.max_instances == 2
    assert got.created_at > 0
    assert [d.name for d in await state.deployments()] == ["org/model-a"]
    assert await state.delete_deployment("org/model-a") is True
    assert await state.get_deployment("org/model-a") is None
    assert await state.deployments() == []


async def test_instances_roundtrip_and_update(state: ClusterState) -> None:
    rec = InstanceRecord(
        instance_id="i1", model="m", worker_id="w", node_id="n", status="loading", created_at=1.0
    )
    await state.put_instance(rec)
    updated = await state.update_instance("i1", status="ready", ready_at=2.0, source_tier="dram")
    assert updated is not None
    assert updated.status == "ready"
    assert [i.status for i in await state.instances("m")] == ["ready"]
    await state.delete_instance(rec)
    assert await state.instances("m") == []
    assert await state.update_instance("i1", status="ready") is None


async def test_retiring_an_instance_deletes_it_and_frees_only_its_own_worker(
    state: ClusterState,
) -> None:
    await state.register_worker("w0", "node-0", "cpu")
    old = InstanceRecord(
        instance_id="i-old",
        model="m",
        worker_id="w0",
        node_id="node-0",
        status="ready",
        created_at=1.0,
    )
    await state.put_instance(old)
    assert await state.reserve_worker("w0", "i-old")
    assert await state.retire_instance(old) is True
    assert await state.instances("m") == []
    worker = await state.get_worker("w0")
    assert worker is not None
    assert worker.instance_id == ""
    # A late retirement (the worker went on to another instance) leaves the worker alone.
    assert await state.reserve_worker("w0", "i-new")
    await state.put_instance(old)
    assert await state.retire_instance(old) is False
    assert await state.get_instance("i-old") is None
    worker = await state.get_worker("w0")
    assert worker is not None
    assert worker.instance_id == "i-new"


async def test_only_one_of_many_concurrent_reservations_wins(
    state: ClusterState, redis: aioredis.Redis, keys: Keys
) -> None:
    await state.register_worker("w0", "node-0", "cpu")
    rivals = [ClusterState(redis, keys) for _ in range(20)]
    wins = await asyncio.gather(*(s.reserve_worker("w0", f"i{n}") for n, s in enumerate(rivals)))
    assert sum(wins) == 1
    holder = f"i{wins.index(True)}"
    (worker,) = await state.workers()
    assert worker.instance_id == holder
    assert not await state.release_worker("w0", "someone-else")
    assert await state.release_worker("w0", holder)
    assert await state.reserve_worker("w0", "next")
    assert not await state.reserve_worker("missing-worker", "x")


async def test_a_repeated_reservation_by_its_holder_succeeds_and_no_one_elses(
    state: ClusterState,
) -> None:
    """A caller that retries a reservation whose outcome it never heard (the connection died
    in a failover) gets its own worker back, not a refusal that strands the worker."""
    await state.register_worker("w0", "node-0", "cpu")
    first = await state.reserve("w0", "i-1")
    assert first is not None
    assert await state.reserve("w0", "i-1") == first
    assert not await state.reserve_worker("w0", "i-2")
    (worker,) = await state.workers()
    assert worker.instance_id == "i-1"


async def test_locality_and_bandwidth(state: ClusterState) -> None:
    await state.set_locality("n0", "dram", "m", 123)
    await state.set_locality("n0", "ssd", "m", 123)
    await state.set_bandwidth("n0", "ssd", 2.5e9)
    await state.remove_locality("n0", "ssd", "m")
    loc = await state.locality("n0")
    assert loc.dram == {"m": 123}
    assert loc.ssd == {}
    assert loc.bandwidth == {"ssd": 2.5e9}


async def test_many_reads_in_one_round_trip_match_one_at_a_time(state: ClusterState) -> None:
    """`instances_of`, `localities` and `workers` read many keys in one script call each: the
    same records as the reads one key at a time."""
    for k, model in enumerate(["a", "a", "b"]):
        await state.put_instance(
            InstanceRecord(
                instance_id=f"i{k}",
                model=model,
                worker_id=f"w{k}",
                node_id="n0",
                status="ready",
                created_at=1.0,
            )
        )
        await state.register_worker(f"w{k}", f"n{k % 2}", "cpu")
    await state.set_locality("n1", "dram", "a", 7)
    got = await state.instances_of(["a", "b", "none"])
    assert got == {m: await state.instances(m) for m in ("a", "b", "none")}
    assert [i.instance_id for i in got["a"]] == ["i0", "i1"]
    assert await state.localities(["n0", "n1"]) == [
        await state.locality("n0"),
        await state.locality("n1"),
    ]
    assert (await state.localities(["n1"]))[0].dram == {"a": 7}
    workers = await state.workers()
    assert [w.worker_id for w in workers] == ["w0", "w1", "w2"]
    assert workers == [await state.get_worker(w.worker_id) for w in workers]


async def test_live_services_are_found_without_scanning_and_the_dead_pruned(
    state: ClusterState, keys: Keys
) -> None:
    await state.beat("storage", "s-live", b'{"n": 1}', ttl_ms=10_000)
    await state.beat("storage", "s-killed", b'{"n": 2}', ttl_ms=50)  # its beat lapses
    await state.beat("storage", "s-stopped", b'{"n": 3}', ttl_ms=10_000)
    await state.forget_service("storage", "s-stopped")
    await asyncio.sleep(0.1)
    assert await state.live_services("storage") == {"s-live": b'{"n": 1}'}
    assert await state.redis.smembers(keys.services("storage")) == {b"s-live"}
    assert await state.live_services("worker") == {}


async def test_a_models_holders_follow_its_locality(state: ClusterState) -> None:
    await state.set_locality("n0", "dram", "org/m:1", 10)
    await state.set_locality("n1", "ssd", "org/m:1", 10)
    await state.set_locality("n0", "ssd", "org/m:1", 10)
    await state.remove_locality("n0", "dram", "org/m:1")
    assert await state.holders("org/m:1") == {"dram": {}, "ssd": {"n1": 10, "n0": 10}}
    assert await state.holders("nothing") == {"dram": {}, "ssd": {}}
