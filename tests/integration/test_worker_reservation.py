"""A worker whose instance the cluster state no longer gives it — the scheduler retired the
instance while the worker was cut off from it (a network partition) — unloads the instance by
itself, so it takes new loads again; an instance that keeps its reservation is left alone; a
worker reserved for an instance whose load order never came (the scheduler died right after
placing it) loads the instance by itself."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from libs.cluster import ClusterState
from libs.protocol import Bus
from libs.protocol.messages import DeploymentSpec
from libs.protocol.state import InstanceRecord

from .test_worker import (
    MODEL,
    NODE,
    WORKER,
    Events,
    ensure_from,
    events,
    place,
    running_worker,
    wait_status,
)

pytestmark = pytest.mark.integration

__all__ = ["events"]  # the fixture this module uses


async def test_an_instance_retired_behind_the_workers_back_is_unloaded(
    nats_server, redis_server, root, bus: Bus, state: ClusterState, events: Events, checkpoint: Path
) -> None:
    async with running_worker(
        nats_server.url, redis_server.url, root, bus, ensure_from(checkpoint)
    ) as svc:
        await place(bus, state, "i-cut")
        await wait_status(state, "i-cut", "ready")
        rec = await state.get_instance("i-cut")
        assert rec is not None
        # What the scheduler does with the instance of a worker it takes for dead.
        await state.retire_instance(rec)
        stopped = await events.wait("instance.stopped", "i-cut")
        assert stopped.reason == "reservation lost"
        assert svc.host.hosted is None
        # Free again: the next placement loads.
        await place(bus, state, "i-next")
        await wait_status(state, "i-next", "ready")


async def test_an_instance_that_keeps_its_reservation_stays(
    nats_server, redis_server, root, bus: Bus, state: ClusterState, events: Events, checkpoint: Path
) -> None:
    async with running_worker(
        nats_server.url, redis_server.url, root, bus, ensure_from(checkpoint)
    ) as svc:
        await place(bus, state, "i-kept")
        await wait_status(state, "i-kept", "ready")
        await asyncio.sleep(1.2)  # six heartbeats
        hosted = svc.host.hosted
        assert hosted is not None
        assert (hosted.instance_id, hosted.status) == ("i-kept", "ready")
        assert not events.of("instance.stopped", "i-kept")


async def test_a_reservation_whose_load_order_never_came_is_loaded(
    nats_server, redis_server, root, bus: Bus, state: ClusterState, events: Events, checkpoint: Path
) -> None:
    async with running_worker(
        nats_server.url, redis_server.url, root, bus, ensure_from(checkpoint)
    ) as svc:
        await state.put_deployment(DeploymentSpec(name=MODEL, checkpoint_uri="file:///models/tiny"))
        # What a scheduler killed between its writes and its load order leaves behind.
        await state.put_instance(
            InstanceRecord(
                instance_id="i-orphan",
                model=MODEL,
                worker_id=WORKER,
                node_id=NODE,
                status="loading",
                created_at=time.time(),
            )
        )
        assert await state.reserve_worker(WORKER, "i-orphan")
        await wait_status(state, "i-orphan", "ready")
        hosted = svc.host.hosted
        assert hosted is not None
        assert (hosted.instance_id, hosted.model) == ("i-orphan", MODEL)
        assert await events.wait("instance.ready", "i-orphan")
