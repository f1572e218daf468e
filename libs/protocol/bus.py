"""A thin typed async layer over nats-py: request/reply, pub/sub, streamed replies, errors.

Every wait has a timeout, every failure surfaces as a `BusError` subclass, and a handler that
raises never takes its service down: the caller gets an error reply with a code instead.
`Bus` is the facade over one connection: serving endpoints is `serving.py`'s, streamed replies
are `streaming.py`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATSClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.micro.service import Service as MicroService
from nats.nuid import NUID

from . import event_stream
from .errors import (
    BadReplyError,
    BusError,
    CredentialsError,
    UnavailableError,
    is_tls_failure,
    redact_url,
)
from .events import Event, event_kind
from .link import Link
from .nats_urls import cluster_size, server_list
from .requests import DEFAULT_REQUEST_TIMEOUT, Requests
from .schema import Message, decode, decode_json, encode, encode_json
from .serving import Route as Route  # re-exported: services build their handler tables with it
from .serving import Services
from .serving import route as route
from .stream import InboxMux, StreamReader
from .streaming import Consumers, Producers
from .streaming import Stream as Stream  # re-exported: handlers return it
from .subjects import Endpoint, StreamEndpoint, Subjects

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)
E = TypeVar("E", bound=Event)
Req = TypeVar("Req", bound=Message)
Rep = TypeVar("Rep", bound=Message)
Chunk = TypeVar("Chunk", bound=Message)


# nats-py pings every 120 s by default: a server cut off or frozen went unnoticed for minutes.
PING_INTERVAL_S = 3.0


class Bus:
    """One NATS connection with sllm's typed request/reply, streams and events on top."""

    def __init__(
        self,
        nc: NATSClient,
        *,
        root: str = "sllm",
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> None:
        self.nc = nc
        self.subjects = Subjects(root)
        self.root = root
        self.request_timeout = request_timeout
        self.instance_id = NUID().next().decode().lower()
        self.link = Link()
        self._requests = Requests(nc, self.link, request_timeout)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._subs: list[Subscription] = []
        # Streamed replies: those this connection produces and those it consumes.
        cancels = self.subjects.stream_cancel(self.instance_id)
        self._producers = Producers(nc, cancels, self.spawn)
        self._consumers = Consumers(nc, self.request_msg, self.spawn)
        self._services = Services(nc, self.subjects, self._producers, self.spawn, self.subscribe)

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        name: str,
        root: str = "sllm",
        connect_timeout: float = 5.0,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        reconnect_wait: float = 0.25,
        tls: ssl.SSLContext | None = None,
    ) -> Bus:
        """Connect to NATS at ``url``; reconnect forever after a successful first connect.
        ``url`` may list a cluster's servers, comma-separated (``nats://a:4222,nats://b:4222``):
        the client then fails over between them (`nats_urls.server_list`).
        ``tls``: the context verifying the server (and presenting a client certificate);
        without it, a ``tls://`` URL uses the system's CAs."""

        refused: list[str] = []
        tls_failures: list[Exception] = []

        async def on_error(exc: Exception) -> None:
            if is_tls_failure(exc):
                tls_failures.append(exc)
            text = str(exc)
            if "Authorization Violation" in text or "Authentication" in text:
                refused.append(text)
            if "permissions violation" in text:
                # Someone asked for something its role may not do: a bug or an intruder.
                log.warning("nats %s: %s", name, text)
            else:
                log.debug("nats %s: %s", name, text)

        made: list[Bus] = []  # the bus, once built: its waits hear of drops and reconnects

        async def on_disconnect() -> None:
            log.info("nats %s: disconnected", name)
            for bus in made:
                bus.link.dropped()

        async def on_reconnect() -> None:
            log.info("nats %s: reconnected", name)
            for bus in made:
                bus.reconnected()

        where = redact_url(url)
        listed = server_list(url)
        try:
            nc = await asyncio.wait_for(
                nats.connect(
                    servers=listed.servers,
                    **listed.auth,
                    name=name,
                    connect_timeout=min(connect_timeout, 2.0),
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=reconnect_wait,
                    # A server that hangs (or a partition) is noticed in seconds, not minutes.
                    ping_interval=PING_INTERVAL_S,
                    max_outstanding_pings=2,
                    error_cb=on_error,
                    disconnected_cb=on_disconnect,
                    reconnected_cb=on_reconnect,
                    **({"tls": tls} if tls is not None else {}),
                ),
                timeout=connect_timeout,
            )
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            if refused or "Authorization Violation" in str(exc):
                raise CredentialsError(
                    f"NATS at {where} refused the credentials (user and password in "
                    "SLLM_NATS_URL): Authorization Violation"
                ) from None
            if is_tls_failure(exc) or tls_failures:
                raise CredentialsError(
                    f"NATS at {where}: the TLS handshake failed ({exc!r}); check "
                    "SLLM_NATS_TLS_CA / _CERT / _KEY against the server's certificate"
                ) from None
            raise UnavailableError(f"cannot connect to NATS at {where}: {exc!r}") from None
        made.append(cls(nc, root=root, request_timeout=request_timeout))
        return made[0]

    def reconnected(self) -> None:
        """The connection is back (subscriptions restored): streams being read may have lost
        frames while it was down; they now fail within seconds if nothing more comes."""
        self.link.restored()
        self._consumers.reconnected()

    @property
    def _mux(self) -> InboxMux | None:
        """The inboxes of the streams this bus consumes (None before the first)."""
        return self._consumers.mux

    @property
    def connected(self) -> bool:
        return bool(self.nc.is_connected)

    @property
    def cluster_size(self) -> int:
        """How many NATS servers the cluster has, as far as this connection knows (the
        servers it was given and those its server advertises): 1 for a lone server."""
        found = self.nc.discovered_servers
        listed = [u.netloc for u in self.nc.servers if u not in found]
        advertised = self.nc._server_info.get("connect_urls") or []  # nats-py has no getter
        return cluster_size(listed, list(advertised))

    async def close(self, timeout: float = 5.0) -> None:
        """Stop serving, cancel producer tasks, and close the connection (bounded in time)."""
        await self._services.stop(timeout)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=timeout)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.nc.close(), timeout)

    # --- request / reply ------------------------------------------------------------------

    async def request_msg(
        self,
        subject: str,
        payload: bytes,
        *,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
        resend_on_drop: bool = False,
    ) -> Msg:
        """Send raw bytes and return the raw reply; error replies raise their typed error
        (`Requests.request_msg`: "no responders" retried briefly, resent after a drop when
        ``resend_on_drop``)."""
        return await self._requests.request_msg(
            subject, payload, timeout=timeout, headers=headers, resend_on_drop=resend_on_drop
        )

    async def request(
        self,
        endpoint: Endpoint[Req, Rep],
        msg: Req,
        *,
        timeout: float | None = None,
        **params: str,
    ) -> Rep:
        """Typed request/reply on ``endpoint``; raises a `BusError` subclass on any failure."""
        subject = endpoint.subject(self.root, **params)
        reply = await self.request_msg(
            subject, encode(msg), timeout=timeout, resend_on_drop=endpoint.resend_on_drop
        )
        return decode(reply.data, endpoint.reply, error=BadReplyError)

    async def request_once(
        self,
        endpoint: Endpoint[Req, Rep],
        msg: Req,
        *,
        timeout: float | None = None,
        **params: str,
    ) -> Rep:
        """`request` without retrying "no responders": for liveness checks of a peer that has
        served ``endpoint`` for a while, where "no responders" means its connection is gone."""
        subject = endpoint.subject(self.root, **params)
        reply = await self._requests.request_msg_once(subject, encode(msg), timeout=timeout)
        return decode(reply.data, endpoint.reply, error=BadReplyError)

    # --- pub / sub ------------------------------------------------------------------------

    async def publish(self, subject: str, msg: Message) -> None:
        try:
            await self.nc.publish(subject, encode(msg))
        except (nats.errors.Error, OSError) as exc:
            raise UnavailableError(f"publish on {subject} failed: {exc!r}") from None

    async def emit(self, event: Event) -> None:
        """Publish a monitoring event as JSON. Best effort: monitoring never fails a caller."""
        if not event.source:
            event = event.model_copy(update={"source": self.instance_id})
        try:
            await self.nc.publish(self.subjects.event(event_kind(type(event))), encode_json(event))
        except (nats.errors.Error, OSError) as exc:
            log.warning("dropped event %s: %r", event_kind(type(event)), exc)

    async def ensure_event_stream(self, *, replicas: int = 1, **limits: Any) -> None:
        """Create (or update) the JetStream stream that retains every event for replay
        (`event_stream.ensure`: ``replicas`` copies on distinct servers of a cluster)."""
        await event_stream.ensure(
            self.nc, self.subjects, self.request_timeout, replicas=replicas, **limits
        )

    async def subscribe(
        self,
        subject: str,
        cls: type[M],
        handler: Callable[[M], Awaitable[None]],
        *,
        queue: str = "",
        json: bool = False,
    ) -> Subscription:
        """Subscribe with typed decoding. Undecodable messages are logged and dropped."""

        async def on_msg(msg: Msg) -> None:
            try:
                item = decode_json(msg.data, cls) if json else decode(msg.data, cls)
            except BusError as exc:
                log.warning("dropped bad message on %s: %s", msg.subject, exc)
                return
            try:
                await handler(item)
            except Exception:
                log.exception("subscriber of %s raised", msg.subject)

        sub = await self.nc.subscribe(subject, queue=queue, cb=on_msg)
        self._subs.append(sub)
        return sub

    # --- serving (routes, dispatch and error replies: `serving.py`) -------------------------

    async def serve(
        self,
        kind: str,
        routes: Sequence[Route],
        *,
        version: str = "0.1.0",
        max_concurrency: int = 1024,
    ) -> MicroService:
        """Serve ``routes`` as one NATS micro service (so ``$SRV.PING/INFO/STATS`` work too).

        Each request runs in its own task, so a slow handler never blocks the others; beyond
        ``max_concurrency`` requests in flight, new ones get an ``overloaded`` error reply.
        """
        return await self._services.serve(
            kind, routes, version=version, max_concurrency=max_concurrency
        )

    # --- tasks ------------------------------------------------------------------------------

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        """Run ``coro`` in a task the bus owns (cancelled on close, exceptions logged)."""
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            what = getattr(task.get_coro(), "__qualname__", task.get_name())
            log.error("bus task %s failed", what, exc_info=task.exception())

    # --- streams (producing and consuming them: `streaming.py`) --------------------------

    def continue_stream(
        self,
        endpoint: StreamEndpoint[Any, Any, Any],
        chunks: AsyncIterator[Message],
        *,
        inbox: str,
        start_seq: int,
        instance_id: str = "",
        worker_id: str = "",
    ) -> tuple[str, str]:
        """Produce ``chunks`` into a stream another producer began (live migration): frames
        numbered from ``start_seq`` go to ``inbox``, exactly as `serve` would publish them,
        announced in-band by a `MovedFrame` (naming ``instance_id`` and ``worker_id``) just
        before the first of them, so the consumer follows the stream to this producer.

        The stream can be cancelled like any this bus produces (when it serves a stream
        endpoint); returns the ``(cancel subject, stream id)`` a consumer would cancel it with.
        """
        return self._producers.continue_(
            endpoint,
            chunks,
            inbox=inbox,
            start_seq=start_seq,
            instance_id=instance_id,
            worker_id=worker_id,
        )

    async def stream(
        self,
        endpoint: StreamEndpoint[Req, Rep, Chunk],
        msg: Req,
        *,
        timeout: float | None = None,
        idle_timeout: float = 30.0,
        **params: str,
    ) -> StreamReader[Rep, Chunk]:
        """Start a streamed request: returns a reader holding the ack and yielding chunks.

        ``timeout`` bounds the wait for the acknowledgement; ``idle_timeout`` bounds the wait
        for each next frame. Use the reader as an async context manager so that leaving early
        cancels the producer.
        """
        subject = endpoint.subject(self.root, **params)
        return await self._consumers.open(
            endpoint, subject, msg, timeout=timeout, idle_timeout=idle_timeout
        )
