"""No stuck state: an unload (or a cancellation) that lands at any await point of a worker's
load or teardown leaves the worker free, its record retired, and able to load again.

The worker is real, on a real NATS and Valkey, loading the tiny demo model. Its load and
teardown tasks are stepped: a task factory wraps them so that each time one of them suspends
(an await that yields to the event loop), a counter moves; at step k the test stops the load,
for k = 0, 1, 2, ... until k is past the end of the load and of the unload that follows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from libs.cluster import ClusterState
from libs.protocol import Bus
from libs.protocol.endpoints import SCHED_DEPLOY, SCHED_PLACE, SCHED_UNDEPLOY, WORKER_LOAD
from libs.protocol.errors import NotFoundError
from libs.protocol.messages import (
    DeploymentSpec,
    DeployRequest,
    EnsureReply,
    EnsureRequest,
    LoadRequest,
    PlaceRequest,
    UndeployRequest,
    UnloadReply,
    UnloadRequest,
)
from libs.protocol.state import InstanceRecord
from services.storage.app import StorageService
from services.storage.settings import StorageSettings
from services.worker.app import WorkerService
from services.worker.settings import WorkerSettings

from .probes import until
from .scheduler_stubs import running_scheduler
from .test_worker import MODEL, NODE, WORKER, running_worker

pytestmark = pytest.mark.integration

GOOD_URI = "file:///models/tiny"
BAD_URI = "file:///models/nowhere"  # storage finds nothing there (the bad URI)
BROKEN_URI = "file:///models/broken"  # storage answers, the loader fails (a bad config.json)
# Coroutines whose tasks are stepped: a load, and a teardown.
STEPPED = frozenset({"Host._load", "Teardowns._run"})
# No load of the tiny model takes this many steps: a sweep that gets here is looping.
MAX_STEPS = 200


class _Stepped(Coroutine[Any, Any, Any]):
    """``coro``, for a task to run, calling ``on_suspend`` each time it suspends (before the
    suspension takes effect: a cancellation requested then lands at that very await)."""

    def __init__(self, coro: Coroutine[Any, Any, Any], on_suspend: Callable[[], None]) -> None:
        self.coro = coro
        self.on_suspend = on_suspend

    def send(self, value: Any) -> Any:
        out = self.coro.send(value)  # StopIteration: the coroutine returned
        self.on_suspend()
        return out

    def throw(self, exc: Any, *args: Any) -> Any:
        out = self.coro.throw(exc, *args)
        self.on_suspend()
        return out

    def close(self) -> None:
        self.coro.close()

    def __await__(self) -> Generator[Any, None, Any]:
        raise TypeError("a task runs it (send, throw); it is not awaited")


class Stepper:
    """Counts the steps of the load and teardown tasks of this test's worker (step 0: the
    load task exists but has not run; then one per suspension) and calls ``action`` at step
    ``at``."""

    def __init__(self, at: int, action: Callable[[Stepper], None]) -> None:
        self.at = at
        self.action = action
        self.steps = 0
        self.fired = False
        self.load_task: asyncio.Task[Any] | None = None

    def step(self) -> None:
        if self.steps == self.at and not self.fired:
            self.fired = True
            self.action(self)
        self.steps += 1

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        previous = loop.get_task_factory()

        def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> asyncio.Future[Any]:
            name = getattr(coro, "__qualname__", "")
            if name in STEPPED:
                coro = _Stepped(coro, self.step)
            task = asyncio.Task(coro, loop=loop, **kw)
            if name == "Host._load":
                self.load_task = task
                self.step()
            return task

        loop.set_task_factory(factory)
        try:
            yield
        finally:
            loop.set_task_factory(previous)


class Stop:
    """What the test does at step k of instance ``iid``: while it loads, an unload (``way``
    "unload", as an undeploy does) or a cancellation of the load task ("cancel"); once the
    unload of the loaded instance is under way, a cancellation of that unload's caller."""

    def __init__(self, svc: WorkerService, iid: str, way: str) -> None:
        self.host = svc.host
        self.iid = iid
        self.way = way
        self.unloads: list[asyncio.Task[UnloadReply]] = []
        self.unloading: asyncio.Task[UnloadReply] | None = None

    def __call__(self, stepper: Stepper) -> None:
        if self.unloading is not None:
            self.unloading.cancel()
        elif self.way == "unload":
            self.unloads.append(asyncio.ensure_future(self.unload()))
        else:
            assert stepper.load_task is not None
            stepper.load_task.cancel()

    async def unload(self) -> UnloadReply:
        return await self.host.unload(UnloadRequest(instance_id=self.iid))


async def request_load(bus: Bus, state: ClusterState, iid: str, uri: str) -> None:
    """What the scheduler does: reserve the worker, record the instance, ask for the load."""
    assert await state.reserve_worker(WORKER, iid), f"the worker is not free for {iid}"
    await state.put_instance(
        InstanceRecord(
            instance_id=iid,
            model=MODEL,
            worker_id=WORKER,
            node_id=NODE,
            status="loading",
            created_at=time.time(),
        )
    )
    await bus.request(
        WORKER_LOAD,
        LoadRequest(instance_id=iid, model=MODEL, checkpoint_uri=uri),
        worker_id=WORKER,
        timeout=10,
    )


async def assert_free(svc: WorkerService, state: ClusterState, iid: str, when: str) -> None:
    """The worker let go of ``iid`` in memory and in Redis, and closed any engine it started
    (a load cancelled in its loader thread disposes of what the thread loads anyway)."""
    host = svc.host
    deadline = time.monotonic() + 30
    while host.hosted is not None:
        assert time.monotonic() < deadline, f"{when}: the worker still hosts {host.hosted}"
        await asyncio.sleep(0.01)
    engine = f"sllm-engine-{iid}"
    while any(t.name == engine for t in threading.enumerate()):
        assert time.monotonic() < deadline, f"{when}: the engine of {iid} still runs"
        await asyncio.sleep(0.01)
    rec = await state.get_worker(WORKER)
    assert rec is not None
    assert rec.instance_id == "", f"{when}: the worker is still reserved for {rec.instance_id}"
    assert await state.get_instance(iid) is None, f"{when}: the record of {iid} is left"


async def sweep(svc: WorkerService, bus: Bus, state: ClusterState, uri: str, way: str) -> int:
    """Stop one load of ``uri`` at step k, for every k up to the end of the load (and, for a
    load that succeeds, of its unload); returns how many steps that took."""
    host = svc.host
    for k in range(MAX_STEPS):
        iid = f"i-{way}-{k}"
        stop = Stop(svc, iid, way)
        stepper = Stepper(k, stop)
        with stepper.installed():
            await request_load(bus, state, iid, uri)
            load = stepper.load_task
            assert load is not None
            await asyncio.wait({load}, timeout=30)
            assert load.done(), f"the load of {iid} did not end"
            hosted = host.hosted
            if not stepper.fired and uri == GOOD_URI:
                # Loaded, as it should have: now unload it (a cancellation of this unload's
                # caller at each step of the teardown must not stop the teardown).
                assert hosted is not None
                assert hosted.status == "ready"
                rec = await state.get_instance(iid)
                assert rec is not None
                assert rec.status == "ready"
                stop.unloading = asyncio.ensure_future(stop.unload())
                await asyncio.wait({stop.unloading}, timeout=30)
                if not stop.unloading.cancelled():
                    assert stop.unloading.result().freed
            if hosted is not None and hosted.teardown is not None:
                await asyncio.wait({hosted.teardown}, timeout=30)
            for task in stop.unloads:
                assert (await task).freed, f"the unload at step {k} did not free the worker"
        await assert_free(svc, state, iid, f"{uri} stopped at step {k} ({way})")
        if not stepper.fired:  # k is past the last step
            return k
    raise AssertionError(f"the load of {uri} still had steps left after {MAX_STEPS}")


def ensure_stub(checkpoint: Path, broken: Path) -> Callable[[EnsureRequest], Any]:
    """A storage service's ensure on the bus: the checkpoint, a broken copy, or an error."""

    async def ensure(req: EnsureRequest) -> EnsureReply:
        paths = {GOOD_URI: checkpoint, BROKEN_URI: broken}
        if req.checkpoint_uri not in paths:
            raise NotFoundError(f"no checkpoint at {req.checkpoint_uri}")
        return EnsureReply(
            model=req.model,
            path=str(paths[req.checkpoint_uri]),
            tier="dram",
            source_tier="dram",
            bytes=1,
            seconds=0,
        )

    return ensure


@pytest.mark.parametrize("way", ["unload", "cancel"])
async def test_a_load_stopped_at_any_await_point_frees_the_worker(
    nats_server, redis_server, root, bus: Bus, state: ClusterState, checkpoint, tmp_path, way
) -> None:
    """A load whose checkpoint storage cannot find (the issue's bad URI), one whose loader
    fails, and a good one (then unloaded): each stopped at every await point of its load and
    teardown; the worker ends free each time and takes the next load."""
    broken = shutil.copytree(checkpoint, tmp_path / "broken")
    (broken / "config.json").write_text("{")
    ensure = ensure_stub(checkpoint, broken)
    async with running_worker(nats_server.url, redis_server.url, root, bus, ensure) as svc:
        await asyncio.shield(svc.host._prepared)  # the torch import: not a step of any load
        steps = {uri: await sweep(svc, bus, state, uri, way) for uri in (BAD_URI, BROKEN_URI)}
        # The last: after all those, a good load still loads (at each k), and unloads.
        steps[GOOD_URI] = await sweep(svc, bus, state, GOOD_URI, way)
    # Each sweep went through its load and teardown, not just a reply: a load fails after
    # at least its ensure and a teardown's first writes, a good one loads and unloads.
    assert min(steps.values()) >= 4, steps
    assert steps[GOOD_URI] > steps[BAD_URI], steps


# --- the race, end to end: a real scheduler, storage service and worker -------------


@contextlib.asynccontextmanager
async def cluster(nats_url: str, redis_url: str, root: str, tmp: Path) -> AsyncIterator[Any]:
    """A scheduler (no housekeeping: no reconciliation comes to the rescue), a storage
    service whose registry is ``tmp / "models"``, and a worker on its node."""
    base = {"SLLM_NATS_URL": nats_url, "SLLM_REDIS_URL": redis_url, "SLLM_ROOT": root}
    storage = StorageService(
        StorageSettings.from_env(
            {
                **base,
                "SLLM_NODE_ID": NODE,
                "SLLM_SSD_DIR": str(tmp / "ssd"),
                "SLLM_DRAM_DIR": str(tmp / "dram"),
                "SLLM_BANDWIDTH_PROBE_MB": "0",
                "SLLM_REGISTRY_ALLOW": str(tmp / "models"),
            }
        )
    )
    worker = WorkerService(
        WorkerSettings.from_env(
            {**base, "SLLM_INSTANCE_ID": WORKER, "SLLM_NODE_ID": NODE, "SLLM_HEARTBEAT_TTL": "5"}
        )
    )
    async with running_scheduler(nats_url, redis_url, root):
        await storage.start()
        try:
            await worker.start()
            try:
                yield worker
            finally:
                await worker.stop("test over")
        finally:
            await storage.stop("test over")


async def test_undeploy_right_after_a_load_failed_on_a_bad_uri_frees_the_worker(
    nats_server, redis_server, root, bus: Bus, state: ClusterState, checkpoint, tmp_path
) -> None:
    models = tmp_path / "models"
    shutil.copytree(checkpoint, models / "tiny")
    bad = DeploymentSpec(name=MODEL, checkpoint_uri=(models / "nowhere").as_uri())
    good = DeploymentSpec(name=MODEL, checkpoint_uri=(models / "tiny").as_uri())
    async with cluster(nats_server.url, redis_server.url, root, tmp_path) as worker:
        await asyncio.shield(worker.host._prepared)
        for attempt in range(5):  # the unload lands at a different point of the failure
            # Unchecked (as a registry that changed after the check would be).
            await bus.request(SCHED_DEPLOY, DeployRequest(spec=bad, check=False))
            placed = await bus.request(SCHED_PLACE, PlaceRequest(model=MODEL), timeout=10)
            assert placed.worker_id == WORKER
            for _ in range(attempt):
                await asyncio.sleep(0)
            await bus.request(SCHED_UNDEPLOY, UndeployRequest(name=MODEL), timeout=30)
            await assert_free(worker, state, placed.instance_id, f"undeploy {attempt}")
        # Deployed again, with a good checkpoint: it loads on the same worker.
        await bus.request(SCHED_DEPLOY, DeployRequest(spec=good))
        placed = await bus.request(SCHED_PLACE, PlaceRequest(model=MODEL), timeout=10)

        async def ready() -> bool:
            rec = await state.get_instance(placed.instance_id)
            return rec is not None and rec.status == "ready"

        await until(ready, "the good deployment's instance to be ready", 60)
        await bus.request(SCHED_UNDEPLOY, UndeployRequest(name=MODEL), timeout=30)
        await assert_free(worker, state, placed.instance_id, "the last undeploy")
