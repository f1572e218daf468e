"""Reconciliation against a real Valkey and NATS: inconsistent records are repaired, each repair
is announced, and a repair decided on a stale snapshot is not applied."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import redis.asyncio as aioredis

from libs.cluster import ClusterState
from libs.protocol import Bus, Keys
from libs.protocol.events import EVENT_TYPES, Event, InstanceStoppedEvent, RecordRepairedEvent
from libs.protocol.state import InstanceRecord
from services.scheduler.reconcile import Grace, Repair, still_wrong
from services.scheduler.repairs import Reconciler

from .probes import until
from .scheduler_stubs import running_scheduler

pytestmark = pytest.mark.integration

OLD = 3600.0  # seconds: a record this old is past every grace period


class Events:
    """Every event of this test's root, typed."""

    def __init__(self) -> None:
        self.seen: list[Event] = []

    async def start(self, bus: Bus) -> Events:
        async def on_msg(msg: Any) -> None:
            kind = json.loads(msg.data)["kind"]
            self.seen.append(EVENT_TYPES[kind].model_validate_json(msg.data))

        await bus.nc.subscribe(bus.subjects.all_events, cb=on_msg)
        await bus.nc.flush()
        return self

    def repaired(self) -> list[RecordRepairedEvent]:
        return [e for e in self.seen if isinstance(e, RecordRepairedEvent)]

    def stopped(self) -> list[InstanceStoppedEvent]:
        return [e for e in self.seen if isinstance(e, InstanceStoppedEvent)]


async def add_worker(state: ClusterState, redis: aioredis.Redis, keys: Keys, wid: str) -> int:
    """A registered worker with a live heartbeat; returns its epoch."""
    await state.register_worker(wid, "n0", "cpu")
    await redis.set(keys.alive("worker", wid), b"{}", px=60_000)
    rec = await state.get_worker(wid)
    assert rec is not None
    return rec.epoch


async def add_instance(
    state: ClusterState, iid: str, wid: str, *, age: float = OLD, **kw: Any
) -> InstanceRecord:
    rec = InstanceRecord(
        instance_id=iid,
        model="m",
        worker_id=wid,
        node_id="n0",
        status=kw.pop("status", "ready"),
        created_at=time.time() - age,
        **kw,
    )
    await state.put_instance(rec)
    return rec


async def test_a_worker_reserved_by_a_vanished_instance_is_freed_and_announced(
    bus: Bus, state: ClusterState, redis: aioredis.Redis, keys: Keys
) -> None:
    events = await Events().start(bus)
    await add_worker(state, redis, keys, "w0")
    assert await state.reserve_worker("w0", "i-vanished")  # its record was never written
    reconciler = Reconciler(bus, state, Grace(reservation_s=0.5))
    assert await reconciler.run() == []  # first seen: a placement may be writing it now
    w = await state.get_worker("w0")
    assert w is not None
    assert w.instance_id == "i-vanished"
    await asyncio.sleep(0.5)
    (made,) = await reconciler.run()
    assert (made.problem, made.worker_id, made.instance_id) == ("unrecorded", "w0", "i-vanished")
    w = await state.get_worker("w0")
    assert w is not None
    assert w.instance_id == ""
    await until(lambda: bool(events.repaired()), "the scheduler.repaired event")
    (ev,) = events.repaired()
    assert (ev.problem, ev.worker_id, ev.instance_id) == ("unrecorded", "w0", "i-vanished")
    assert (ev.freed_worker, ev.deleted_record) == (True, False)
    assert "no record" in ev.detail
    assert await reconciler.run() == []  # repaired: nothing more to do


async def test_the_scheduler_sweep_forgets_an_instance_whose_worker_holds_another(
    nats_server, redis_server, root, bus: Bus, state: ClusterState, redis, keys
) -> None:
    events = await Events().start(bus)
    epoch = await add_worker(state, redis, keys, "w0")
    await add_worker(state, redis, keys, "w1")
    assert await state.reserve_worker("w0", "i-new")
    await add_instance(state, "i-new", "w0", worker_epoch=epoch)
    await add_instance(state, "i-old", "w0", worker_epoch=epoch)  # w0 holds i-new, not this
    await add_instance(state, "i-lost", "w1", status="loading")  # w1 holds nothing
    await add_instance(state, "i-gone", "w-unknown")  # no such worker
    young = await add_instance(state, "i-young", "w1", age=0.0)  # a placement under way
    async with running_scheduler(nats_server.url, redis_server.url, root) as scheduler:
        await scheduler.sweep()
    assert await state.get_instance("i-new") is not None
    assert await state.get_instance("i-young") == young
    for iid in ("i-old", "i-lost", "i-gone"):
        assert await state.get_instance(iid) is None, iid
    assert [r.instance_id for r in await state.instances("m")] == ["i-new", "i-young"]
    w0 = await state.get_worker("w0")
    assert w0 is not None
    assert w0.instance_id == "i-new"  # the worker's own instance is untouched

    await until(lambda: len(events.repaired()) == 3, "three scheduler.repaired events")
    repaired = {e.instance_id: e for e in events.repaired()}
    assert repaired["i-old"].problem == "not_held"
    assert "holds 'i-new'" in repaired["i-old"].detail
    assert repaired["i-lost"].problem == "not_held"
    assert repaired["i-gone"].problem == "worker_gone"
    assert all(e.deleted_record and not e.freed_worker for e in repaired.values())
    # Whoever follows instances (routers, the autoscaler) hears that they are gone.
    await until(lambda: len(events.stopped()) == 3, "three instance.stopped events")
    assert {e.instance_id: e.reason for e in events.stopped()} == {
        "i-old": "not on its worker",
        "i-lost": "not on its worker",
        "i-gone": "worker gone",
    }


async def test_a_repair_decided_on_a_stale_snapshot_is_not_applied(
    state: ClusterState, redis: aioredis.Redis, keys: Keys
) -> None:
    """Between the snapshot and the repair, the placement wrote its record: the atomic
    re-check sees it and leaves both records alone."""
    await add_worker(state, redis, keys, "w0")
    assert await state.reserve_worker("w0", "i0")
    stale = Repair("unrecorded", "w0", "i0", "", True, False, "reserved for i0, no record")
    await add_instance(state, "i0", "w0", age=0.0, status="loading")
    applied = await state.repair(
        "w0",
        "i0",
        free_worker=True,
        delete_record=False,
        still=lambda w, r: still_wrong(stale, w, r),
    )
    assert not applied
    w = await state.get_worker("w0")
    assert w is not None
    assert w.instance_id == "i0"
    # And a repair still called for is applied: the worker dies, its record goes with it.
    await redis.delete(keys.alive("worker", "w0"))
    dead = Repair("worker_dead", "w0", "i0", "m", True, True, "its worker stopped heartbeating")
    assert await state.repair(
        "w0", "i0", free_worker=True, delete_record=True, still=lambda w, r: still_wrong(dead, w, r)
    )
    assert await state.get_instance("i0") is None
    assert await state.instances("m") == []
    w = await state.get_worker("w0")
    assert w is not None
    assert w.instance_id == ""
