"""The router: the REST edge (FastAPI) plus its bus presence as a service."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import Scope

from libs.cluster import ClusterState
from libs.common import task_dump
from libs.common.metrics_server import advertised, discover
from libs.common.service import Service, ServiceKind
from libs.protocol.errors import BusError, UnavailableError
from libs.protocol.events import (
    DeploymentEvent,
    InstanceFailedEvent,
    InstanceReadyEvent,
    InstanceStoppedEvent,
    MigrationCommittedEvent,
)

from .auth import ApiKeys
from .backend import Backend
from .body_limit import BodyLimit
from .cluster import ClusterView
from .cluster_view import ClusterReader
from .cold_queue import ColdQueue
from .demand import DemandTracker
from .deployments import DeploymentsApi
from .embeddings import EmbeddingServing
from .errors import ApiError, from_bus, invalid_request, to_api_error
from .hotpath import HotPath
from .liveness import LivenessWatch
from .metrics import RouterMetrics
from .openapi_doc import HealthStatus, ReadyStatus, error_answers, honest_openapi
from .recent_events import EventFollower
from .routes import STATIC_DIR, cluster_routes, guarded, v1_routes
from .serving import OpenAIServing
from .settings import RouterSettings

log = logging.getLogger(__name__)


class MetricsTargets(BaseModel):
    """A target group of Prometheus' HTTP service discovery: one service's metrics address,
    labelled with its kind (``service``), ``instance`` id and ``node``."""

    model_config = ConfigDict(extra="forbid")

    targets: list[str]
    labels: dict[str, str]


class RouterService(Service):
    kind: ClassVar[ServiceKind] = "router"

    def __init__(self, settings: RouterSettings) -> None:
        super().__init__(settings, instance_id=settings.instance_id)
        self.router_settings = settings
        self.api_keys = ApiKeys(
            settings.api_keys, admin=settings.admin_keys, metrics=settings.metrics_keys
        )
        self.metrics = RouterMetrics()
        # Its /metrics is on its own port (`create_fastapi`); `Service` serves none for it.
        self.metrics_addr = advertised(settings.host, settings.port)
        self._serving: OpenAIServing | None = None
        self._embeddings: EmbeddingServing | None = None
        self._deployments: DeploymentsApi | None = None
        self._starts: ColdQueue | None = None
        self._demand: DemandTracker | None = None
        self.events = EventFollower()  # recent events, load phases, tokens/s (the status page)
        self._cluster: ClusterReader | None = None

    @property
    def serving(self) -> OpenAIServing:
        if self._serving is None:
            raise RuntimeError("the router is not started")
        return self._serving

    @property
    def embeddings(self) -> EmbeddingServing:
        if self._embeddings is None:
            raise RuntimeError("the router is not started")
        return self._embeddings

    @property
    def cluster(self) -> ClusterReader:
        if self._cluster is None:
            raise RuntimeError("the router is not started")
        return self._cluster

    @property
    def deployments(self) -> DeploymentsApi:
        if self._deployments is None:
            raise RuntimeError("the router is not started")
        return self._deployments

    async def on_start(self) -> None:
        s = self.router_settings
        view = ClusterView(ClusterState(self.redis, self.keys), ttl=s.instance_cache_ttl)
        demand = DemandTracker(self.bus, self.instance_id, refresh_s=s.demand_refresh_interval)
        self._demand = demand
        self._starts = ColdQueue(
            self.bus,
            view,
            self.metrics,
            queue_size=s.queue_size,
            place_timeout=s.place_timeout,
            retry_after=s.retry_after,
            on_change=demand.changed,
        )
        demand.waiting = self._starts.waiting
        self.tasks.loop("demand", demand.run)
        backend = Backend(
            self.bus, view, self._starts, self.metrics, s, self.instance_id, demand=demand
        )
        self._serving = OpenAIServing(backend)
        self._embeddings = EmbeddingServing(backend)
        self.tasks.loop("liveness", LivenessWatch(backend).run)  # silent instances
        self._deployments = DeploymentsApi(backend, s.allow_list())
        self._cluster = ClusterReader(
            view.state,
            self.events,
            self.instance_id,
            in_flight=view.inflight,
            held=demand.requests,
            waiting=self._starts.waiting,
        )
        self.events.on_phase = self._starts.on_phase  # cold-start progress (monitoring)
        await self.events.follow(self.bus)

        # The events below are hints that may speed things up: losing one never misroutes a
        # stream. A migrated stream announces its new producer in-band (the reader follows
        # it), a stopping worker ends its streams with an error frame, and the liveness watch
        # finds dead workers.
        async def on_instance(ev: InstanceReadyEvent) -> None:
            view.changed(ev.model)

        async def on_instance_end(ev: InstanceStoppedEvent | InstanceFailedEvent) -> None:
            view.changed(ev.model)
            why = ev.reason if isinstance(ev, InstanceStoppedEvent) else ev.error
            await backend.instance_gone(ev.instance_id, why or ev.kind)

        async def on_migrated(ev: MigrationCommittedEvent) -> None:
            await backend.migrated(
                ev.request_id,
                inbox=ev.inbox,
                instance_id=ev.instance_id,
                worker_id=ev.worker_id,
                cancel_subject=ev.cancel_subject,
                stream_id=ev.stream_id,
            )

        async def on_deployment(ev: DeploymentEvent) -> None:
            view.forget_deployment(ev.name)
            view.changed(ev.name)

        bus, subjects = self.bus, self.bus.subjects
        await bus.subscribe(
            subjects.event("instance.ready"), InstanceReadyEvent, on_instance, json=True
        )
        await bus.subscribe(
            subjects.event("instance.stopped"), InstanceStoppedEvent, on_instance_end, json=True
        )
        await bus.subscribe(
            subjects.event("instance.failed"), InstanceFailedEvent, on_instance_end, json=True
        )
        await bus.subscribe(
            subjects.event("deployment.changed"), DeploymentEvent, on_deployment, json=True
        )
        await bus.subscribe(
            subjects.event("migration.committed"), MigrationCommittedEvent, on_migrated, json=True
        )

    async def on_stop(self) -> None:
        if self._starts is not None:
            await self._starts.close()
        if self._demand is not None:
            await self._demand.close()

    async def ready(self) -> tuple[bool, str]:
        """Able to serve: connected to NATS and Redis answers."""
        if self._bus is None or not self._bus.connected:
            return False, "not connected to NATS"
        try:
            await self.redis.ping()
        except (RedisError, OSError) as exc:
            return False, f"Redis unreachable: {exc!r}"
        return True, "ok"


def create_app(svc: RouterService) -> BodyLimit:
    """The ASGI app of the router: the body limit of every route, then the completion routes'
    `HotPath`, then FastAPI."""
    return BodyLimit(HotPath(create_fastapi(svc), svc), svc.router_settings.max_body_bytes)


def create_fastapi(svc: RouterService) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task_dump.install(asyncio.get_running_loop())
        await svc.start()
        crashed = asyncio.ensure_future(_stop_when_crashed(svc))
        try:
            yield
        finally:
            crashed.cancel()
            await svc.stop("shutdown")

    app = FastAPI(
        title="sllm",
        version="0.1.0",
        description="OpenAI-compatible completions, the model list and the deployments API.",
        lifespan=lifespan,
    )
    honest_openapi(app)
    retry_after = svc.router_settings.retry_after

    @app.exception_handler(ApiError)
    async def on_api_error(_: Request, exc: ApiError) -> Response:
        return exc.response()

    @app.exception_handler(BusError)
    async def on_bus_error(_: Request, exc: BusError) -> Response:
        return from_bus(exc, retry_after=retry_after).response()

    @app.exception_handler(RequestValidationError)
    async def on_invalid(_: Request, exc: RequestValidationError) -> Response:
        return invalid_request(exc.errors()).response()

    @app.exception_handler(HTTPException)
    async def on_http(request: Request, exc: HTTPException) -> Response:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names the methods of the first route of the path only (GET and DELETE
            # of a deployment are two routes).
            headers["Allow"] = ", ".join(allowed_methods(app, request.scope))
        return ApiError(exc.status_code, str(exc.detail), headers=headers).response()

    @app.exception_handler(Exception)
    async def on_bug(_: Request, exc: Exception) -> Response:
        log.error("unhandled error", exc_info=exc)
        return to_api_error(exc, retry_after=retry_after).response()

    @app.get("/health", responses=error_answers())
    async def health() -> HealthStatus:
        return HealthStatus(status="alive")

    unready: dict[int | str, dict[str, Any]] = {
        503: {"model": ReadyStatus, "description": "Not able to serve, and why."}
    }

    @app.get("/ready", response_model=ReadyStatus, responses=unready | error_answers())
    async def ready() -> JSONResponse:
        ok, why = await svc.ready()
        return JSONResponse(
            {"status": "ready" if ok else "unavailable", "detail": why}, 200 if ok else 503
        )

    metrics_keys, metrics_keyed = guarded(svc.api_keys, "metrics")
    text: dict[int | str, dict[str, Any]] = {
        200: {
            "description": "Prometheus' text format.",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    }

    @app.get(
        "/metrics",
        dependencies=metrics_keys,
        response_model=None,
        responses=text | error_answers(*metrics_keyed),
    )
    async def metrics() -> Response:
        try:  # the scheduler's estimate errors live in the cluster state
            errors = await ClusterState(svc.redis, svc.keys).estimate_errors()
            svc.metrics.set_estimate_errors(errors)
        except (RedisError, OSError) as exc:
            log.warning("estimate errors not read for /metrics: %r", exc)
        return Response(svc.metrics.render(), media_type=svc.metrics.content_type)

    @app.get(
        "/metrics/targets",
        dependencies=metrics_keys,
        response_model=list[MetricsTargets],
        responses=error_answers(*metrics_keyed, 503),
    )
    async def metrics_targets() -> JSONResponse:
        """Every live service's metrics address, for Prometheus' `http_sd_configs`."""
        try:
            groups = await discover(ClusterState(svc.redis, svc.keys))
        except (RedisError, OSError) as exc:
            raise UnavailableError(f"cluster state unreachable: {exc!r}") from None
        return JSONResponse(groups)

    app.include_router(v1_routes(svc))
    app.include_router(cluster_routes(svc))
    # check_dir=False: a package without its page still serves the API (the page 404s).
    app.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")
    return app


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """The methods of every route of the scope's path."""
    methods: set[str] = set()
    for route in app.router.routes:
        if isinstance(route, BaseRoute) and route.matches(scope)[0] is not Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return sorted(methods)


async def _stop_when_crashed(svc: RouterService) -> None:
    """A background loop that crashed for good stops the router as `run_service` stops the
    other services: uvicorn shuts down on SIGTERM (loudly: the cause is logged first)."""
    await svc.tasks.crashed.wait()
    log.critical("router stops: a background task crashed: %r", svc.tasks.error)
    signal.raise_signal(signal.SIGTERM)
