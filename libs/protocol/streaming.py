"""Streamed replies on one bus connection: producing them (a stream endpoint's handler, or a
live migration's continuation of another producer's stream), cancelling them on request, and
opening them as a consumer. The frames themselves are `stream.py`'s; `Bus` delegates here.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from nats.aio.client import Client as NATSClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.micro.request import Request as MicroRequest
from nats.nuid import NUID

from .errors import BadReplyError, BadRequestError, BusError, InternalError, StreamHandedOver
from .schema import CancelStream, Message, decode, encode
from .stream import InboxMux, MovedFrame, StreamReader, StreamWriter
from .subjects import CANCEL_SUBJECT_HEADER, STREAM_ID_HEADER, StreamEndpoint

log = logging.getLogger(__name__)

Req = TypeVar("Req", bound=Message)
Rep = TypeVar("Rep", bound=Message)
Chunk = TypeVar("Chunk", bound=Message)

# How long a stream's acknowledgement may wait to travel together with the first frame.
ACK_COALESCE_S = 0.005

Spawn = Callable[[Awaitable[Any]], "asyncio.Task[Any]"]
Subscribe = Callable[..., Awaitable[Subscription]]
RequestMsg = Callable[..., Awaitable[Msg]]


@dataclass
class Stream(Generic[Rep, Chunk]):
    """What a stream handler returns: the acknowledgement, then the chunks to publish."""

    ack: Rep
    chunks: AsyncIterator[Chunk]


class Producers:
    """The streams one connection produces, by stream id (so that a cancel finds its task)."""

    def __init__(self, nc: NATSClient, cancel_subject: str, spawn: Spawn) -> None:
        self.nc = nc
        self.cancel_subject = cancel_subject  # where consumers send `CancelStream`
        self._spawn = spawn
        self._nuid = NUID()
        self._streams: dict[str, asyncio.Task[Any]] = {}
        self._cancel_sub: Subscription | None = None

    async def serve_cancels(self, subscribe: Subscribe) -> None:
        """Answer cancels (once, whatever the number of stream endpoints served)."""
        if self._cancel_sub is not None:
            return

        async def on_cancel(msg: CancelStream) -> None:
            task = self._streams.get(msg.stream_id)
            if task is not None:
                task.cancel()

        self._cancel_sub = await subscribe(self.cancel_subject, CancelStream, on_cancel)

    async def start(
        self, endpoint: StreamEndpoint[Any, Any, Any], msg: Message, result: Any, req: MicroRequest
    ) -> None:
        """Acknowledge a stream request and produce its chunks into the consumer's inbox."""
        if not isinstance(result, Stream) or not isinstance(result.ack, endpoint.reply):
            raise InternalError(f"{endpoint.name}: stream handler must return Stream(ack, chunks)")
        inbox = getattr(msg, "inbox", "")
        start_seq = getattr(msg, "start_seq", 0)
        if not inbox:
            with contextlib.suppress(Exception):
                await result.chunks.aclose()  # type: ignore[attr-defined]
            raise BadRequestError(f"{endpoint.name}: stream request without an inbox")
        writer = StreamWriter(self.nc, inbox, start_seq=start_seq)
        stream_id = self._new_id()
        headers = {STREAM_ID_HEADER: stream_id, CANCEL_SUBJECT_HEADER: self.cancel_subject}
        ack = _Ack(req.subject, functools.partial(req.respond, encode(result.ack), headers=headers))
        # Register the producer before acknowledging, so a cancel that races the ack finds it.
        task = self._run(stream_id, self._produce(endpoint, writer, result.chunks, ack))
        # The acknowledgement goes out with the first frame when that comes soon (one message
        # write and one wake-up of the consumer less), else on its own after ACK_COALESCE_S.
        timer = asyncio.get_running_loop().call_later(ACK_COALESCE_S, lambda: self._spawn(ack()))
        task.add_done_callback(lambda _: timer.cancel())

    def continue_(
        self,
        endpoint: StreamEndpoint[Any, Any, Any],
        chunks: AsyncIterator[Message],
        *,
        inbox: str,
        start_seq: int,
        instance_id: str = "",
        worker_id: str = "",
    ) -> tuple[str, str]:
        """Produce ``chunks`` into a stream another producer began, announced in-band (see
        `Bus.continue_stream`); returns the ``(cancel subject, stream id)``."""

        async def no_ack() -> None:
            return None

        stream_id = self._new_id()
        announce = MovedFrame(
            seq=start_seq,
            cancel_subject=self.cancel_subject,
            stream_id=stream_id,
            instance_id=instance_id,
            worker_id=worker_id,
        )
        writer = StreamWriter(self.nc, inbox, start_seq=start_seq, announce=announce)
        self._run(stream_id, self._produce(endpoint, writer, chunks, _Ack(inbox, no_ack)))
        return self.cancel_subject, stream_id

    def _new_id(self) -> str:
        return self._nuid.next().decode()

    def _run(self, stream_id: str, produce: Awaitable[None]) -> asyncio.Task[Any]:
        task = self._spawn(produce)
        self._streams[stream_id] = task
        task.add_done_callback(lambda _: self._streams.pop(stream_id, None))
        return task

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


class Consumers:
    """The streams one connection consumes: their inboxes (one wildcard subscription) and
    the request that starts each one."""

    def __init__(self, nc: NATSClient, request_msg: RequestMsg, spawn: Spawn) -> None:
        self.nc = nc
        self._request_msg = request_msg
        self._spawn = spawn
        self.mux: InboxMux | None = None  # created with the first stream

    def reconnected(self) -> None:
        if self.mux is not None:
            self.mux.reconnected()

    async def open(
        self,
        endpoint: StreamEndpoint[Req, Rep, Chunk],
        subject: str,
        msg: Req,
        *,
        timeout: float | None,
        idle_timeout: float,
    ) -> StreamReader[Rep, Chunk]:
        """Send the stream request on ``subject``; the reader, once acknowledged (see
        `Bus.stream`)."""
        if self.mux is None:
            self.mux = InboxMux(self.nc)
        inbox = getattr(msg, "inbox", "") or self.mux.new_inbox()
        msg = msg.model_copy(update={"inbox": inbox})
        reader: StreamReader[Rep, Chunk] = StreamReader(
            self.nc,
            inbox,
            endpoint.chunk,
            idle_timeout=idle_timeout,
            start_seq=getattr(msg, "start_seq", 0),
        )
        await reader.open(self.mux)
        ack = asyncio.ensure_future(self._request_msg(subject, encode(msg), timeout=timeout))
        try:
            reply = await asyncio.shield(ack)
            reader.ack = decode(reply.data, endpoint.reply, error=BadReplyError)
        except asyncio.CancelledError:
            # The caller gave up while the producer may be starting: once its acknowledgement
            # names the stream, cancel it there, or it would produce for nobody.
            self._spawn(_cancel_when_acked(ack, reader))
            raise
        except BaseException:
            await reader.aclose()
            raise
        _bind_cancel(reader, reply)
        return reader


async def _cancel_when_acked(ack: asyncio.Future[Msg], reader: StreamReader[Any, Any]) -> None:
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
