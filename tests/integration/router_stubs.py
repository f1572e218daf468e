"""Test helpers for the router: the app under uvicorn in the test's loop, and stand-in
scheduler and worker responders served on the real bus (the real ones arrive later)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
import uvicorn

from libs.cluster import ClusterState
from libs.protocol import Bus, Keys, Stream, route
from libs.protocol.endpoints import (
    SCHED_DEPLOY,
    SCHED_PATCH,
    SCHED_PLACE,
    SCHED_UNDEPLOY,
    WORKER_GENERATE,
)
from libs.protocol.errors import (
    BusError,
    InternalError,
    NotFoundError,
    OverloadedError,
    UnavailableError,
)
from libs.protocol.events import (
    DeploymentEvent,
    Event,
    InstanceFailedEvent,
    InstanceReadyEvent,
    InstanceStoppedEvent,
)
from libs.protocol.messages import (
    DeploymentSpec,
    DeployReply,
    DeployRequest,
    FinishReason,
    GenerateReply,
    GenerateRequest,
    PatchDeploymentRequest,
    PlaceReply,
    PlaceRequest,
    TokenChunk,
    UndeployReply,
    UndeployRequest,
    Usage,
)
from libs.protocol.state import InstanceRecord
from services.router.app import RouterService, create_app
from services.router.settings import RouterSettings
from services.scheduler.deployer import DeployConfig, Deployer
from services.scheduler.deployment_book import DeploymentBook

MODEL = "demo/tiny"
# What the stand-in worker "generates": one chunk per piece.
PIECES = ["Hello", ",", " world", "!"]


def router_settings(nats_url: str, redis_url: str, root: str, **env: str) -> RouterSettings:
    base = {
        "SLLM_NATS_URL": nats_url,
        "SLLM_REDIS_URL": redis_url,
        "SLLM_ROOT": root,
        "SLLM_INSTANCE_ID": "router-test",
        "SLLM_START_TIMEOUT": "10",
        "SLLM_STREAM_IDLE_TIMEOUT": "10",
        "SLLM_RETRY_AFTER": "3",
        "SLLM_REGISTRY_ALLOW": "/models",  # where the tests' deployments say they come from
    }
    return RouterSettings.from_env({**base, **env})


@dataclass
class RunningRouter:
    svc: RouterService
    url: str

    @property
    def v1(self) -> str:
        return self.url + "/v1"


class _QuietServer(uvicorn.Server):
    """uvicorn without its signal handlers: Ctrl-C stays with pytest."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def running_router(settings: RouterSettings) -> AsyncIterator[RunningRouter]:
    """The router app under a real uvicorn on a free port, in this event loop."""
    svc = RouterService(settings)
    config = uvicorn.Config(
        create_app(svc), log_level="warning", lifespan="on", timeout_graceful_shutdown=2
    )
    server = _QuietServer(config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    deadline = time.monotonic() + 15
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn stopped before it started")
        assert time.monotonic() < deadline, "the router did not start"
        await asyncio.sleep(0.01)
    try:
        yield RunningRouter(svc, f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 15)
        sock.close()


@dataclass
class StubScheduler:
    """Answers place/deploy/undeploy the way the real scheduler will, writing ClusterState."""

    bus: Bus
    state: ClusterState
    worker_ids: list[str] = field(default_factory=lambda: ["w0"])
    load_s: float = 0.05
    unavailable_first: int = 0  # answer `unavailable` (no free worker) this many times first
    fail_loads: int = 0  # this many loads end "failed" before one succeeds
    never_ready: bool = False
    dead_workers: set[str] = field(default_factory=set)  # as the real one: skip their instances
    places: list[PlaceRequest] = field(default_factory=list)
    _next: int = 0
    _deployer: Deployer | None = None

    async def serve(self) -> StubScheduler:
        await self.bus.serve(
            "scheduler",
            [
                route(SCHED_PLACE, self.place),
                route(SCHED_DEPLOY, self.deploy),
                route(SCHED_PATCH, self.patch),
                route(SCHED_UNDEPLOY, self.undeploy),
            ],
        )
        return self

    @property
    def deployer(self) -> Deployer:
        """The real scheduler's deploy logic (no storage to check with, nothing to prefetch)."""
        if self._deployer is None:
            config = DeployConfig(prefetch_replicas=0, prefetch_timeout=10.0, inspect_timeout=5.0)
            self._deployer = Deployer(self.bus, self.state, DeploymentBook(), config, lambda: None)
        return self._deployer

    async def deploy(self, req: DeployRequest) -> DeployReply:
        return await self.deployer.deploy(req)

    async def patch(self, req: PatchDeploymentRequest) -> DeployReply:
        return await self.deployer.patch(req)

    async def undeploy(self, req: UndeployRequest) -> UndeployReply:
        if not await self.state.delete_deployment(req.name):
            raise NotFoundError(f"no deployment named {req.name!r}")
        stopped = []
        for rec in await self.state.instances(req.name):
            await self.state.retire_instance(rec)
            await self.bus.emit(
                InstanceStoppedEvent(
                    instance_id=rec.instance_id, model=rec.model, worker_id=rec.worker_id
                )
            )
            stopped.append(rec.instance_id)
        await self.bus.emit(DeploymentEvent(name=req.name, action="deleted"))
        return UndeployReply(name=req.name, stopped_instances=sorted(stopped))

    async def place(self, req: PlaceRequest) -> PlaceReply:
        self.places.append(req)
        if await self.state.get_deployment(req.model) is None:
            raise NotFoundError(f"no deployment named {req.model!r}")
        for rec in await self.state.instances(req.model):
            if rec.status in ("ready", "loading") and rec.worker_id not in self.dead_workers:
                return _reply(rec)
        if self.unavailable_first > 0:
            self.unavailable_first -= 1
            raise UnavailableError(f"no free worker for {req.model!r}")
        worker = self.worker_ids[self._next % len(self.worker_ids)]
        self._next += 1
        rec = InstanceRecord(
            instance_id=f"i-{self._next}",
            model=req.model,
            worker_id=worker,
            node_id="node-0",
            status="loading",
            created_at=time.time(),
        )
        await self.state.put_instance(rec)
        self.bus.spawn(self._load(rec))
        return _reply(rec)

    async def _load(self, rec: InstanceRecord) -> None:
        await asyncio.sleep(self.load_s)
        if self.never_ready:
            return
        if self.fail_loads > 0:
            self.fail_loads -= 1
            await self.state.update_instance(rec.instance_id, status="failed", error="bad disk")
            await self.bus.emit(
                InstanceFailedEvent(
                    instance_id=rec.instance_id,
                    model=rec.model,
                    worker_id=rec.worker_id,
                    error="bad disk",
                )
            )
            return
        await make_ready(self.state, self.bus, rec, load_s=self.load_s)


def _reply(rec: InstanceRecord) -> PlaceReply:
    return PlaceReply(
        instance_id=rec.instance_id,
        worker_id=rec.worker_id,
        node_id=rec.node_id,
        status=rec.status,
        source_tier="dram",
        estimated_startup_s=0.0,
    )


async def make_ready(
    state: ClusterState, bus: Bus, rec: InstanceRecord, *, load_s: float = 0.0
) -> None:
    await state.update_instance(
        rec.instance_id, status="ready", ready_at=time.time(), source_tier="dram", load_s=load_s
    )
    await bus.emit(
        InstanceReadyEvent(
            instance_id=rec.instance_id,
            model=rec.model,
            worker_id=rec.worker_id,
            node_id=rec.node_id,
            source_tier="dram",
            load_s=load_s,
        )
    )


async def ready_instance(
    state: ClusterState, model: str = MODEL, instance_id: str = "i-warm", worker_id: str = "w0"
) -> InstanceRecord:
    """Record a ready instance directly (a warm model)."""
    rec = InstanceRecord(
        instance_id=instance_id,
        model=model,
        worker_id=worker_id,
        node_id="node-0",
        status="ready",
        created_at=time.time(),
        ready_at=time.time(),
        source_tier="dram",
        load_s=0.0,
    )
    await state.put_instance(rec)
    return rec


@dataclass
class StubWorker:
    """A worker's generate endpoint that streams scripted pieces and records what happens."""

    bus: Bus
    worker_id: str = "w0"
    pieces: list[str] = field(default_factory=lambda: list(PIECES))
    delay: float = 0.0
    overloaded_first: int = 0
    finish_reason: FinishReason = "stop"
    reject: BusError | None = None  # answer every generate request with this error
    fail_after: int = -1  # after this many chunks, end the stream with an error
    requests: list[GenerateRequest] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    sent: int = 0

    async def serve(self) -> StubWorker:
        await self.bus.serve(
            "worker", [route(WORKER_GENERATE, self.generate, worker_id=self.worker_id)]
        )
        return self

    async def generate(self, req: GenerateRequest) -> Stream[GenerateReply, TokenChunk]:
        self.requests.append(req)
        if self.overloaded_first > 0:
            self.overloaded_first -= 1
            raise OverloadedError(f"{self.worker_id}: every slot is busy")
        if self.reject is not None:
            raise self.reject
        prompt_ids = req.prompt_token_ids or [1, 2, 3]
        pieces = self.pieces[: req.params.max_tokens]
        reason: FinishReason = "length" if len(pieces) < len(self.pieces) else self.finish_reason

        async def chunks() -> AsyncIterator[TokenChunk]:
            try:
                for i, piece in enumerate(pieces):
                    if i == self.fail_after:
                        raise InternalError("device lost")
                    if self.delay:
                        await asyncio.sleep(self.delay)
                    last = i == len(pieces) - 1
                    self.sent += 1
                    yield TokenChunk(
                        token_ids=[100 + i],
                        text=piece,
                        prefill_s=0.01 if i == 0 else None,
                        decode_s=0.02 if last else None,
                        finish_reason=reason if last else None,
                        usage=Usage(prompt_tokens=len(prompt_ids), completion_tokens=len(pieces))
                        if last
                        else None,
                    )
                self.finished.set()
            finally:
                self.closed.set()

        ack = GenerateReply(
            request_id=req.request_id,
            worker_id=self.worker_id,
            instance_id="i-any",
            prompt_token_ids=prompt_ids,
        )
        return Stream(ack=ack, chunks=chunks())


async def deploy(state: ClusterState, model: str = MODEL) -> DeploymentSpec:
    spec = DeploymentSpec(name=model, checkpoint_uri="file:///models/demo", created_at=time.time())
    await state.put_deployment(spec)
    return spec


class EventLog:
    """Collects the JSON events of some kinds published under the test's root."""

    def __init__(self) -> None:
        self.items: list[Event] = []

    async def watch(self, bus: Bus, kind: str, cls: type[Event]) -> EventLog:
        async def on_event(ev: Event) -> None:
            self.items.append(ev)

        await bus.subscribe(bus.subjects.event(kind), cls, on_event, json=True)
        return self

    async def wait_for(self, pred: Callable[[Any], bool], timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            for item in self.items:
                if pred(item):
                    return item
            assert time.monotonic() < deadline, f"no matching event among {self.items}"
            await asyncio.sleep(0.02)


def cluster_state(redis: aioredis.Redis, keys: Keys) -> ClusterState:
    return ClusterState(redis, keys)
