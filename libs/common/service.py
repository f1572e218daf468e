"""The shape every bus service shares: connections in an AsyncExitStack, an ``info`` endpoint,
a liveness heartbeat in Redis, started/stopped events, and a signal-driven main loop."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import socket
import time
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from libs.cluster import ClusterState
from libs.protocol import Bus, BusError, Keys, Route, route
from libs.protocol.endpoints import SERVICE_INFO
from libs.protocol.errors import CredentialsError, UnavailableError
from libs.protocol.events import (
    ServiceStartedEvent,
    ServiceStoppedEvent,
    StateRepublishedEvent,
)
from libs.protocol.messages import InfoRequest, ServiceInfoReply
from libs.protocol.schema import encode_json

from . import task_dump
from .logs import setup_logging
from .redis_client import connect_redis, primary_address
from .settings import CommonSettings
from .supervise import Restart, Supervisor
from .tls import nats_tls

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)

ServiceKind = Literal["router", "scheduler", "worker", "storage"]
VERSION = "0.1.0"
# The heartbeat handles the store's errors itself: a heartbeat that keeps crashing is a bug,
# and a service nobody sees alive should exit (and be restarted) rather than linger.
HEARTBEAT_RESTART = Restart(max_crashes=5, window_s=60.0)


def default_instance_id(kind: str) -> str:
    """``<kind>-<host>-<random>``: unique, and readable in logs."""
    host = "".join(c if c.isalnum() else "-" for c in socket.gethostname())[:24]
    return f"{kind}-{host}-{uuid.uuid4().hex[:6]}"


class Service:
    """Base of the scheduler, worker and storage services (the router embeds one too)."""

    kind: ClassVar[ServiceKind]

    def __init__(
        self, settings: CommonSettings, *, instance_id: str = "", node_id: str = ""
    ) -> None:
        self.settings = settings
        self.instance_id = instance_id or default_instance_id(self.kind)
        self.node_id = node_id
        self.keys = Keys(settings.root)
        self.started_at = time.time()
        self._stack = AsyncExitStack()
        self._bus: Bus | None = None
        self._redis: aioredis.Redis | None = None
        self._store_epoch = ""  # the cluster state store's epoch this service last published to
        # The primary a sentinel-managed store client last reached (None: one server).
        self._primary: tuple[str, int] | None = None
        # Every background loop and one-shot task of the service: stop cancels them all.
        self.tasks = Supervisor(self.kind)
        # Where this service's Prometheus /metrics answers (host:port; "": nowhere), in its
        # heartbeat for the router's /metrics/targets (`metrics_server`).
        self.metrics_addr = ""

    @property
    def bus(self) -> Bus:
        if self._bus is None:
            raise RuntimeError(f"{self.kind} is not started")
        return self._bus

    @property
    def redis(self) -> aioredis.Redis:
        if self._redis is None:
            raise RuntimeError(f"{self.kind} is not started")
        return self._redis

    def routes(self) -> list[Route]:
        """The handler table; subclasses add theirs to this one."""
        return [route(SERVICE_INFO, self.info, kind=self.kind, instance_id=self.instance_id)]

    async def info(self, _: InfoRequest) -> ServiceInfoReply:
        return ServiceInfoReply(
            kind=self.kind,
            instance_id=self.instance_id,
            node_id=self.node_id,
            version=VERSION,
            started_at=self.started_at,
            metrics_addr=self.metrics_addr,
        )

    def metrics_registry(self) -> CollectorRegistry | None:
        """Hook: the Prometheus registry of this service, served on ``SLLM_METRICS_ADDR``
        (None: the service has no metrics port)."""
        return None

    async def on_start(self) -> None:
        """Hook: runs after the connections exist and before the routes are served."""

    async def on_stop(self) -> None:
        """Hook: runs before the connections close."""

    async def on_beat(self) -> None:
        """Hook: runs after each heartbeat that reached the store (a cheap check of what the
        cluster state says of this service; a Redis error is logged and retried next beat)."""

    async def on_store_reset(self) -> None:
        """Hook: the cluster state store (Redis) lost its data (it restarted empty, or failed
        over to a replica that had nothing): write back what this service owns. Raising
        leaves the reset pending: the next heartbeat tries again."""

    async def start(self) -> None:
        s = self.settings
        if self.tasks.closed:  # started again after a stop
            self.tasks = Supervisor(self.kind)
        self._bus = await Bus.connect(
            s.nats_url,
            name=f"{self.kind}:{self.instance_id}",
            root=s.root,
            request_timeout=s.request_timeout,
            tls=nats_tls(s.nats_tls),
        )
        self._stack.push_async_callback(self._bus.close)
        self._redis = await connect_redis(s.redis_url, timeout=s.request_timeout, tls=s.redis_tls)
        self._stack.push_async_callback(self._redis.aclose)
        self._stack.push_async_callback(self.tasks.aclose)
        try:
            self._store_epoch = await ClusterState(self._redis, self.keys).store_epoch()
        except (RedisError, OSError) as exc:
            raise UnavailableError(f"cannot read the cluster state: {exc!r}") from None
        await self._serve_metrics()
        await self.on_start()
        await self._bus.serve(self.kind, [_state_errors(r) for r in self.routes()], version=VERSION)
        self.tasks.loop("heartbeat", self._heartbeat, restart=HEARTBEAT_RESTART)
        await self._bus.emit(
            ServiceStartedEvent(
                source=self.instance_id, service=self.kind, version=VERSION, settings=s.public()
            )
        )
        log.info("%s %s started", self.kind, self.instance_id)

    async def stop(self, reason: str = "") -> None:
        """Stop the background tasks, announce, forget the liveness key, run ``on_stop`` and
        close everything."""
        await self.tasks.aclose()
        try:
            await self.on_stop()
        except Exception:
            log.exception("%s: on_stop failed", self.kind)
        if self._bus is not None:
            await self._bus.emit(
                ServiceStoppedEvent(source=self.instance_id, service=self.kind, reason=reason)
            )
        if self._redis is not None:
            with contextlib.suppress(RedisError, OSError):
                await ClusterState(self._redis, self.keys).forget_service(
                    self.kind, self.instance_id
                )
        await self._stack.aclose()
        log.info("%s %s stopped (%s)", self.kind, self.instance_id, reason or "requested")

    async def _serve_metrics(self) -> None:
        registry = self.metrics_registry()
        if registry is None or not self.settings.metrics_addr:
            return
        from .metrics_server import MetricsServer

        addr = self.settings.metrics_addr
        server = MetricsServer(registry, keys=self.settings.metrics_keys)
        try:
            self.metrics_addr = await server.start(addr)
        except OSError as exc:  # a port still held by a process before this one: retried
            raise UnavailableError(f"cannot serve metrics on {addr}: {exc}") from None
        self._stack.push_async_callback(server.close)

    async def _heartbeat(self) -> None:
        ttl_ms = int(self.settings.heartbeat_ttl * 1000)
        state = ClusterState(self.redis, self.keys)
        while True:
            try:
                info = encode_json(await self.info(InfoRequest()))
                epoch = await state.beat(self.kind, self.instance_id, info, ttl_ms)
                await self._check_store(epoch)
                await self.on_beat()
            except (RedisError, OSError) as exc:
                log.warning("heartbeat failed: %r", exc)
            await asyncio.sleep(self.settings.heartbeat_interval)

    async def _check_store(self, epoch: str) -> None:
        """Re-publish what this service owns once the store's ``epoch`` (as the heartbeat
        read it) changed (it lost its data), or once it failed over to a replica (writes not
        yet replicated are lost, and the epoch, a replicated key, cannot tell)."""
        primary = primary_address(self.redis)
        reason: Literal["reset", "failover"]
        if epoch != self._store_epoch:
            log.warning("the cluster state store lost its data: re-publishing this %s's", self.kind)
            reason = "reset"
        elif primary is not None and self._primary not in (None, primary):
            log.warning(
                "the cluster state store failed over (%s:%s -> %s:%s): re-publishing this %s's",
                *(self._primary or ("", 0)),
                *primary,
                self.kind,
            )
            reason = "failover"
        else:
            self._primary = primary
            return
        try:
            await self.on_store_reset()
        except (RedisError, OSError):
            raise  # the store is unreachable again: the heartbeat logs it, the next beat retries
        except Exception:
            # Visible, and retried at the next beat: the heartbeat itself must go on.
            log.exception("re-publishing after the store's %s failed", reason)
            return
        self._store_epoch, self._primary = epoch, primary
        await self.bus.emit(
            StateRepublishedEvent(
                source=self.instance_id, service=self.kind, epoch=epoch, reason=reason
            )
        )


def _state_errors(r: Route) -> Route:
    """``r`` whose handler answers "unavailable" (503, worth retrying) when the cluster state
    store cannot be reached, instead of an internal error: a Redis restart is an outage of
    seconds that callers wait out, not a bug."""
    handler = r.handler

    async def guarded(req: Any) -> Any:
        try:
            return await handler(req)
        except (RedisError, OSError) as exc:
            raise UnavailableError(f"cluster state unreachable: {exc!r}") from None

    return dataclasses.replace(r, handler=guarded)


def fast_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (a dependency; not on Windows): the same
    asyncio API with a faster loop and socket I/O; else None (asyncio's own)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_service(build: Callable[[], Service], *, startup_timeout: float = 60.0) -> int:
    """Run a service until SIGINT/SIGTERM; retry the start while NATS or Redis come up."""

    async def main() -> int:
        svc = build()
        setup_logging(svc.settings.log_level, f"{svc.kind}")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        task_dump.install(loop)
        deadline = time.monotonic() + startup_timeout
        while True:
            try:
                await svc.start()
                break
            except CredentialsError as exc:  # configuration, not a server still starting
                await svc.stop("start failed")
                log.error("%s could not start: %s", svc.kind, exc)
                return 2
            except BusError as exc:
                await svc.stop("start failed")
                svc = build()
                if time.monotonic() > deadline or stop.is_set():
                    log.error("%s could not start: %s", svc.kind, exc)
                    return 2
                log.warning("%s start failed, retrying: %s", svc.kind, exc)
                await asyncio.sleep(1.0)
        crashed = asyncio.ensure_future(svc.tasks.crashed.wait())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait([crashed, stopped], return_when=asyncio.FIRST_COMPLETED)
        crashed.cancel()
        stopped.cancel()
        failed = svc.tasks.crashed.is_set()
        if failed:
            log.critical("%s stops: a background task crashed: %r", svc.kind, svc.tasks.error)
        try:
            await asyncio.wait_for(svc.stop("crashed" if failed else "signal"), 15)
        except TimeoutError:
            log.error("%s did not stop within 15 s", svc.kind)
            return 1
        return 1 if failed else 0

    with asyncio.Runner(loop_factory=fast_loop_factory()) as runner:
        return runner.run(main())
