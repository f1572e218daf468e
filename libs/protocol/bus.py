"""A thin typed async layer over nats-py: request/reply, pub/sub, streamed replies, errors.

Every wait has a timeout, every failure surfaces as a `BusError` subclass, and a handler that
raises never takes its service down: the caller gets an error reply with a code instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATSClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.micro import add_service
from nats.micro.request import Request as MicroRequest
from nats.micro.service import Service as MicroService

from .errors import (
    BadReplyError,
    BadRequestError,
    BusError,
    BusTimeoutError,
    CredentialsError,
    InternalError,
    NoRespondersError,
    OverloadedError,
    StreamHandedOver,
    UnavailableError,
    error_for_code,
    redact_url,
)
from .events import Event, event_kind
from .schema import (
    CancelStream,
    ErrorBody,
    Message,
    decode,
    decode_json,
    encode,
    encode_json,
    error_body,
)
from .stream import InboxMux, StreamReader, StreamWriter
from .subjects import (
    CANCEL_SUBJECT_HEADER,
    ERROR_CODE_HEADER,
    ERROR_HEADER,
    STREAM_ID_HEADER,
    Endpoint,
    StreamEndpoint,
    Subjects,
)

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)
E = TypeVar("E", bound=Event)
Req = TypeVar("Req", bound=Message)
Rep = TypeVar("Rep", bound=Message)
Chunk = TypeVar("Chunk", bound=Message)

DEFAULT_REQUEST_TIMEOUT = 5.0
# How long a stream's acknowledgement may wait to travel together with the first frame.
ACK_COALESCE_S = 0.005
NO_RESPONDERS_GRACE = 0.5


@dataclass
class Stream(Generic[Rep, Chunk]):
    """What a stream handler returns: the acknowledgement, then the chunks to publish."""

    ack: Rep
    chunks: AsyncIterator[Chunk]


Handler = Callable[[Any], Awaitable[Any]]


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
        self.instance_id = nc._nuid.next().decode().lower()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._streams: dict[str, asyncio.Task[Any]] = {}
        self._mux: InboxMux | None = None  # the inboxes of the streams this bus consumes
        self._services: list[MicroService] = []
        self._subs: list[Subscription] = []
        self._cancel_sub: Subscription | None = None
        self._inflight = 0

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
    ) -> Bus:
        """Connect to NATS at ``url``; reconnect forever after a successful first connect."""

        refused: list[str] = []

        async def on_error(exc: Exception) -> None:
            text = str(exc)
            if "Authorization Violation" in text or "Authentication" in text:
                refused.append(text)
            if "permissions violation" in text:
                # Someone asked for something its role may not do: a bug or an intruder.
                log.warning("nats %s: %s", name, text)
            else:
                log.debug("nats %s: %s", name, text)

        async def on_disconnect() -> None:
            log.info("nats %s: disconnected", name)

        made: list[Bus] = []  # the bus, once built: its open streams hear of a reconnect

        async def on_reconnect() -> None:
            log.info("nats %s: reconnected", name)
            for bus in made:
                bus.reconnected()

        where = redact_url(url)
        try:
            nc = await asyncio.wait_for(
                nats.connect(
                    servers=[url],
                    name=name,
                    connect_timeout=min(connect_timeout, 2.0),
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=reconnect_wait,
                    error_cb=on_error,
                    disconnected_cb=on_disconnect,
                    reconnected_cb=on_reconnect,
                ),
                timeout=connect_timeout,
            )
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            if refused or "Authorization Violation" in str(exc):
                raise CredentialsError(
                    f"NATS at {where} refused the credentials (user and password in "
                    "SLLM_NATS_URL): Authorization Violation"
                ) from None
            raise UnavailableError(f"cannot connect to NATS at {where}: {exc!r}") from None
        made.append(cls(nc, root=root, request_timeout=request_timeout))
        return made[0]

    def reconnected(self) -> None:
        """The connection is back (subscriptions restored): streams being read may have lost
        frames while it was down; they now fail within seconds if nothing more comes."""
        if self._mux is not None:
            self._mux.reconnected()

    @property
    def connected(self) -> bool:
        return bool(self.nc.is_connected)

    async def close(self, timeout: float = 5.0) -> None:
        """Stop serving, cancel producer tasks, and close the connection (bounded in time)."""
        for svc in self._services:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(svc.stop(), timeout)
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
    ) -> Msg:
        """Send raw bytes and return the raw reply; error replies raise their typed error.

        "No responders" is retried briefly: nats-server 2.15 occasionally answers it for a
        subscription another connection made (and flushed) a moment ago, e.g. just after a
        service starts. A subject nobody serves still fails within ``NO_RESPONDERS_GRACE``.
        """
        t = self.request_timeout if timeout is None else timeout
        deadline = time.monotonic() + t
        grace_until = time.monotonic() + min(NO_RESPONDERS_GRACE, t)
        delay = 0.02
        while True:
            try:
                msg = await self.nc.request(
                    subject,
                    payload,
                    timeout=max(deadline - time.monotonic(), 0.001),
                    headers=headers,
                )
                break
            except nats.errors.NoRespondersError:
                if time.monotonic() + delay >= grace_until:
                    raise NoRespondersError(f"no service answers {subject}") from None
                await asyncio.sleep(delay)
                delay *= 2
            except nats.errors.TimeoutError:
                raise BusTimeoutError(f"no reply on {subject} within {t:g}s") from None
            except (nats.errors.Error, OSError) as exc:
                raise UnavailableError(f"request on {subject} failed: {exc!r}") from None
        raise_if_error(msg, subject)
        return msg

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
        reply = await self.request_msg(subject, encode(msg), timeout=timeout)
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

    async def ensure_event_stream(
        self, *, max_age_s: float = 7 * 86400, max_bytes: int = 256 * 1024 * 1024
    ) -> None:
        """Create (or update) the JetStream stream that retains every event for replay."""
        from nats.js.api import DiscardPolicy, StorageType, StreamConfig

        config = StreamConfig(
            name=self.subjects.events_stream,
            subjects=[self.subjects.all_events],
            max_age=max_age_s,
            max_bytes=max_bytes,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
        )
        js = self.nc.jetstream(timeout=self.request_timeout)
        try:
            try:
                await js.add_stream(config)
            except nats.js.errors.BadRequestError:
                await js.update_stream(config)  # exists with another config: take ours
        except (nats.errors.Error, OSError) as exc:
            raise UnavailableError(f"cannot create the event stream: {exc!r}") from None

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

    # --- serving --------------------------------------------------------------------------

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
        svc = await add_service(
            self.nc, name=self.subjects.service_name(kind), version=version, queue_group="q"
        )
        self._services.append(svc)
        for r in routes:
            subject = r.endpoint.subject(self.root, **r.params)
            await svc.add_endpoint(
                name=r.endpoint.name,
                subject=subject,
                handler=self._dispatcher(r, subject, max_concurrency),
                queue_group=r.queue or "q",
            )
        if any(isinstance(r.endpoint, StreamEndpoint) for r in routes):
            await self._serve_cancels()
        await self.nc.flush(timeout=5)
        return svc

    def _dispatcher(
        self, r: Route, subject: str, max_concurrency: int
    ) -> Callable[[MicroRequest], Awaitable[None]]:
        async def dispatch(req: MicroRequest) -> None:
            if self._inflight >= max_concurrency:
                await self._respond_error(
                    req, OverloadedError(f"{subject}: {self._inflight} requests in flight")
                )
                return
            self.spawn(self._handle(r, subject, req))

        return dispatch

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        """Run ``coro`` in a task the bus owns (cancelled on close, exceptions logged)."""
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("bus task failed", exc_info=task.exception())

    async def _handle(self, r: Route, subject: str, req: MicroRequest) -> None:
        self._inflight += 1
        try:
            msg = decode(req.data, r.endpoint.request, error=BadRequestError)
            result = await r.handler(msg)
            if isinstance(r.endpoint, StreamEndpoint):
                await self._start_stream(r.endpoint, msg, result, req)
            else:
                if not isinstance(result, r.endpoint.reply):
                    raise InternalError(
                        f"{subject}: handler returned {type(result).__name__}, "
                        f"expected {r.endpoint.reply.__name__}"
                    )
                await req.respond(encode(result))
        except BusError as exc:
            await self._respond_error(req, exc)
        except Exception as exc:
            log.exception("handler of %s raised", subject)
            await self._respond_error(req, InternalError(f"{subject}: {exc!r}"))
        finally:
            self._inflight -= 1

    async def _respond_error(self, req: MicroRequest, exc: BusError) -> None:
        body, headers = error_reply(exc)
        with contextlib.suppress(Exception):
            await req.respond(body, headers=headers)

    # --- streams --------------------------------------------------------------------------

    async def _start_stream(
        self, endpoint: StreamEndpoint[Any, Any, Any], msg: Message, result: Any, req: MicroRequest
    ) -> None:
        if not isinstance(result, Stream) or not isinstance(result.ack, endpoint.reply):
            raise InternalError(f"{endpoint.name}: stream handler must return Stream(ack, chunks)")
        inbox = getattr(msg, "inbox", "")
        start_seq = getattr(msg, "start_seq", 0)
        if not inbox:
            with contextlib.suppress(Exception):
                await result.chunks.aclose()  # type: ignore[attr-defined]
            raise BadRequestError(f"{endpoint.name}: stream request without an inbox")
        writer = StreamWriter(self.nc, inbox, start_seq=start_seq)
        stream_id = self.nc._nuid.next().decode()
        headers = {
            STREAM_ID_HEADER: stream_id,
            CANCEL_SUBJECT_HEADER: self.subjects.stream_cancel(self.instance_id),
        }
        ack = _Ack(req.subject, functools.partial(req.respond, encode(result.ack), headers=headers))
        # Register the producer before acknowledging, so a cancel that races the ack finds it.
        task = self.spawn(self._produce(endpoint, writer, result.chunks, ack))
        self._streams[stream_id] = task
        task.add_done_callback(lambda _: self._streams.pop(stream_id, None))
        # The acknowledgement goes out with the first frame when that comes soon (one message
        # write and one wake-up of the consumer less), else on its own after ACK_COALESCE_S.
        timer = asyncio.get_running_loop().call_later(ACK_COALESCE_S, lambda: self.spawn(ack()))
        task.add_done_callback(lambda _: timer.cancel())

    async def _produce(
        self,
        endpoint: StreamEndpoint[Any, Any, Any],
        writer: StreamWriter,
        chunks: AsyncIterator[Message],
        ack: _Ack,
    ) -> None:
        try:
            async for chunk in chunks:
                if not isinstance(chunk, endpoint.chunk):
                    raise InternalError(
                        f"{endpoint.name}: produced {type(chunk).__name__}, "
                        f"expected {endpoint.chunk.__name__}"
                    )
                last = endpoint.ends is not None and endpoint.ends(chunk)
                await ack()
                await writer.send(chunk, last=last)
                if last:
                    return  # the stream is over for the consumer; `finally` closes the source
            await ack()
            await writer.end()
        except asyncio.CancelledError:
            # The consumer cancelled (or the bus is closing): nobody is listening any more.
            raise
        except StreamHandedOver:
            return  # another producer continues the stream at the next sequence number
        except BusError as exc:
            await ack()
            await writer.fail(exc)
        except Exception as exc:
            log.exception("stream producer of %s raised", endpoint.name)
            await ack()
            await writer.fail(InternalError(f"{endpoint.name}: {exc!r}"))
        finally:
            await ack()  # a consumer cancelled before the ack still waits for it
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    def continue_stream(
        self,
        endpoint: StreamEndpoint[Any, Any, Any],
        chunks: AsyncIterator[Message],
        *,
        inbox: str,
        start_seq: int,
    ) -> tuple[str, str]:
        """Produce ``chunks`` into a stream another producer began (live migration): frames
        numbered from ``start_seq`` go to ``inbox``, exactly as `serve` would publish them.

        The stream can be cancelled like any this bus produces (when it serves a stream
        endpoint); returns the ``(cancel subject, stream id)`` a consumer would cancel it with.
        """

        async def no_ack() -> None:
            return None

        writer = StreamWriter(self.nc, inbox, start_seq=start_seq)
        stream_id = self.nc._nuid.next().decode()
        task = self.spawn(self._produce(endpoint, writer, chunks, _Ack(inbox, no_ack)))
        self._streams[stream_id] = task
        task.add_done_callback(lambda _: self._streams.pop(stream_id, None))
        return self.subjects.stream_cancel(self.instance_id), stream_id

    async def _serve_cancels(self) -> None:
        if self._cancel_sub is not None:
            return

        async def on_cancel(msg: CancelStream) -> None:
            task = self._streams.get(msg.stream_id)
            if task is not None:
                task.cancel()

        self._cancel_sub = await self.subscribe(
            self.subjects.stream_cancel(self.instance_id), CancelStream, on_cancel
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
        if self._mux is None:
            self._mux = InboxMux(self.nc)
        inbox = getattr(msg, "inbox", "") or self._mux.new_inbox()
        msg = msg.model_copy(update={"inbox": inbox})
        reader: StreamReader[Rep, Chunk] = StreamReader(
            self.nc,
            inbox,
            endpoint.chunk,
            idle_timeout=idle_timeout,
            start_seq=getattr(msg, "start_seq", 0),
        )
        await reader.open(self._mux)
        ack = asyncio.ensure_future(self.request_msg(subject, encode(msg), timeout=timeout))
        try:
            reply = await asyncio.shield(ack)
            reader.ack = decode(reply.data, endpoint.reply, error=BadReplyError)
        except asyncio.CancelledError:
            # The caller gave up while the producer may be starting: once its acknowledgement
            # names the stream, cancel it there, or it would produce for nobody.
            self.spawn(self._cancel_when_acked(ack, reader))
            raise
        except BaseException:
            await reader.aclose()
            raise
        _bind_cancel(reader, reply)
        return reader

    async def _cancel_when_acked(
        self, ack: asyncio.Future[Msg], reader: StreamReader[Any, Any]
    ) -> None:
        try:
            _bind_cancel(reader, await ack)
        except BusError:
            pass  # no producer was started
        finally:
            await reader.aclose()


class _Ack:
    """A stream's acknowledgement, sent exactly once by whoever calls first."""

    def __init__(self, subject: str, send: Callable[[], Awaitable[None]]) -> None:
        self.subject = subject
        self._send: Callable[[], Awaitable[None]] | None = send

    async def __call__(self) -> None:
        send, self._send = self._send, None
        if send is None:
            return
        try:
            await send()
        except Exception as exc:  # the consumer's inbox is gone or the bus is closing
            log.warning("cannot acknowledge the stream request on %s: %r", self.subject, exc)


def _bind_cancel(reader: StreamReader[Any, Any], reply: Msg) -> None:
    headers = reply.headers or {}
    reader.bind_cancel(headers.get(CANCEL_SUBJECT_HEADER), headers.get(STREAM_ID_HEADER))
