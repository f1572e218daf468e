"""Serving endpoints on one bus connection: routes (a handler bound to an endpoint's subject), the
NATS micro services that answer them, each request's dispatch in its own task, and error replies
(written here, read back by the caller's `raise_if_error`). `Bus.serve` delegates here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from nats.aio.client import Client as NATSClient
from nats.aio.msg import Msg
from nats.micro import add_service
from nats.micro.request import Request as MicroRequest
from nats.micro.service import Service as MicroService

from .errors import (
    BadReplyError,
    BadRequestError,
    BusError,
    InternalError,
    OverloadedError,
    error_for_code,
)
from .schema import ErrorBody, Message, decode, encode, error_body
from .streaming import Producers, Stream, Subscribe
from .subjects import ERROR_CODE_HEADER, ERROR_HEADER, Endpoint, StreamEndpoint, Subjects

log = logging.getLogger(__name__)

Req = TypeVar("Req", bound=Message)
Rep = TypeVar("Rep", bound=Message)

Handler = Callable[[Any], Awaitable[Any]]
Spawn = Callable[[Awaitable[Any]], "asyncio.Task[Any]"]


@dataclass(frozen=True)
class Route:
    """One handler bound to one concrete subject of an endpoint."""

    endpoint: Endpoint[Any, Any]
    handler: Handler
    params: dict[str, str] = field(default_factory=dict)
    queue: str | None = None


def route(
    endpoint: Endpoint[Req, Rep],
    handler: Callable[[Req], Awaitable[Rep]] | Callable[[Req], Awaitable[Stream[Rep, Any]]],
    *,
    queue: str | None = None,
    **params: str,
) -> Route:
    """Bind ``handler`` to ``endpoint`` (with its subject parameters)."""
    return Route(endpoint, handler, params, queue)


def error_reply(exc: BusError) -> tuple[bytes, dict[str, str]]:
    """The body and headers of an error reply for ``exc``."""
    body = error_body(exc)
    headers = {ERROR_CODE_HEADER: exc.code.value, ERROR_HEADER: exc.message[:512]}
    return encode(body), headers


def raise_if_error(msg: Msg, subject: str) -> None:
    """Raise the typed error carried by an error reply, if ``msg`` is one."""
    code = (msg.headers or {}).get(ERROR_CODE_HEADER)
    if code is None:
        return
    message = (msg.headers or {}).get(ERROR_HEADER, "")
    detail: dict[str, object] = {"subject": subject}
    with contextlib.suppress(BusError):
        body = decode(msg.data, ErrorBody, error=BadReplyError)
        message, detail = body.message or message, {**body.detail, **detail}
    raise error_for_code(code, message or f"error reply from {subject}", detail)


class Services:
    """The NATS micro services one connection serves, and the requests in flight in them."""

    def __init__(
        self,
        nc: NATSClient,
        subjects: Subjects,
        producers: Producers,
        spawn: Spawn,
        subscribe: Subscribe,
    ) -> None:
        self.nc = nc
        self.subjects = subjects
        self._producers = producers  # stream endpoints' handlers hand their streams over here
        self._spawn = spawn
        self._subscribe = subscribe
        self._services: list[MicroService] = []
        self._inflight = 0

    async def serve(
        self, kind: str, routes: Sequence[Route], *, version: str, max_concurrency: int
    ) -> MicroService:
        """Serve ``routes`` as one micro service (see `Bus.serve`)."""
        svc = await add_service(
            self.nc, name=self.subjects.service_name(kind), version=version, queue_group="q"
        )
        self._services.append(svc)
        for r in routes:
            subject = r.endpoint.subject(self.subjects.root, **r.params)
            await svc.add_endpoint(
                name=r.endpoint.name,
                subject=subject,
                handler=self._dispatcher(r, subject, max_concurrency),
                queue_group=r.queue or "q",
            )
        if any(isinstance(r.endpoint, StreamEndpoint) for r in routes):
            await self._producers.serve_cancels(self._subscribe)
        await self.nc.flush(timeout=5)
        return svc

    async def stop(self, timeout: float) -> None:
        """Stop answering (each service bounded by ``timeout``)."""
        for svc in self._services:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(svc.stop(), timeout)

    def _dispatcher(
        self, r: Route, subject: str, max_concurrency: int
    ) -> Callable[[MicroRequest], Awaitable[None]]:
        async def dispatch(req: MicroRequest) -> None:
            if self._inflight >= max_concurrency:
                await _respond_error(
                    req, OverloadedError(f"{subject}: {self._inflight} requests in flight")
                )
                return
            self._spawn(self._handle(r, subject, req))

        return dispatch

    async def _handle(self, r: Route, subject: str, req: MicroRequest) -> None:
        self._inflight += 1
        try:
            msg = decode(req.data, r.endpoint.request, error=BadRequestError)
            result = await r.handler(msg)
            if isinstance(r.endpoint, StreamEndpoint):
                await self._producers.start(r.endpoint, msg, result, req)
            else:
                if not isinstance(result, r.endpoint.reply):
                    raise InternalError(
                        f"{subject}: handler returned {type(result).__name__}, "
                        f"expected {r.endpoint.reply.__name__}"
                    )
                await req.respond(encode(result))
        except BusError as exc:
            await _respond_error(req, exc)
        except Exception as exc:
            log.exception("handler of %s raised", subject)
            await _respond_error(req, InternalError(f"{subject}: {exc!r}"))
        finally:
            self._inflight -= 1


async def _respond_error(req: MicroRequest, exc: BusError) -> None:
    body, headers = error_reply(exc)
    with contextlib.suppress(Exception):
        await req.respond(body, headers=headers)
