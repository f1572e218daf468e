"""Both ends of a streamed reply: numbered frames published to the consumer's inbox.

The producer numbers frames from ``start_seq``; the consumer delivers them in order, drops
duplicates and buffers frames that arrive early. That is what lets a stream move to another
producer (migration, failover) without the consumer noticing: the new producer simply
continues the numbering. A producer that takes over a live stream (migration) also announces
itself in-band, with a `MovedFrame` just before its first frame: the consumer learns who
produces the stream now (and where a cancel goes) from the stream itself, not from an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from typing import Any, Generic, Literal, TypeVar

import nats.errors
from nats.aio.client import Client as NATSClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import Field

from .errors import BadReplyError, BusError, BusTimeoutError, UnavailableError, error_for_code
from .schema import (
    CancelStream,
    ErrorBody,
    Message,
    StreamFrame,
    encode,
    error_body,
    unpack,
    validate,
)

Rep = TypeVar("Rep", bound=Message)
Chunk = TypeVar("Chunk", bound=Message)

# Frames buffered ahead of a gap before the stream is declared broken.
MAX_REORDER = 4096
# How long a missing frame may stay missing once later frames have arrived. NATS delivers one
# publisher's messages in order, so a gap that lasts is a lost frame (a reconnect drops what
# was in flight), not a late one; a migration's two producers overlap by milliseconds.
GAP_S = 2.0
# How long a stream may stay silent after its consumer's bus reconnected. Frames published
# while the connection was down can be lost for good: the producer's client flushes what it
# buffered as soon as it is back, which may be before the consumer's subscription is.
RECONNECT_GRACE_S = 5.0
# Hand-over notices held for sequence numbers not reached yet (more is a broken producer).
MAX_MOVES = 64
_WAKE = b""  # not a frame: wakes a waiting reader (frames are never empty)


class MovedFrame(Message):
    """In-band hand-over of a stream (live migration): from frame ``seq`` on, the stream comes
    from the producer named here. It takes no sequence number of its own: it travels just
    before that producer's frame ``seq``, and a cancel now goes to ``cancel_subject``."""

    seq: int = Field(ge=0)
    kind: Literal["moved"] = "moved"
    cancel_subject: str
    stream_id: str
    instance_id: str = ""
    worker_id: str = ""


def decode_frame(data: bytes) -> StreamFrame:
    """Decode one frame; on the consumer side anything malformed is ``bad_reply``."""
    return validate(unpack(data, error=BadReplyError), StreamFrame, error=BadReplyError)


def decode_any_frame(data: bytes) -> StreamFrame | MovedFrame:
    """A frame or a hand-over notice."""
    obj = unpack(data, error=BadReplyError)
    if isinstance(obj, dict) and obj.get("kind") == "moved":
        return validate(obj, MovedFrame, error=BadReplyError)
    return validate(obj, StreamFrame, error=BadReplyError)


class StreamWriter:
    """Publishes numbered frames to one inbox; ``announce`` (a producer taking over a stream)
    goes out just before the first frame, and not at all if no frame ever does."""

    def __init__(
        self,
        nc: NATSClient,
        inbox: str,
        *,
        start_seq: int = 0,
        announce: MovedFrame | None = None,
    ) -> None:
        self.nc = nc
        self.inbox = inbox
        self.seq = start_seq
        self._announce = announce

    async def _put(self, frame: StreamFrame) -> None:
        try:
            if self._announce is not None:
                announce, self._announce = self._announce, None
                await self.nc.publish(
                    self.inbox, encode(announce.model_copy(update={"seq": frame.seq}))
                )
            await self.nc.publish(self.inbox, encode(frame))
        except (nats.errors.Error, OSError) as exc:
            raise UnavailableError(f"cannot publish to stream {self.inbox}: {exc!r}") from None
        self.seq += 1

    async def send(self, chunk: Message, *, last: bool = False) -> None:
        """Publish ``chunk``; ``last`` also ends the stream (no `end` frame follows)."""
        kind: Literal["data", "last"] = "last" if last else "data"
        await self._put(StreamFrame(seq=self.seq, kind=kind, data=chunk.model_dump()))

    async def end(self) -> None:
        await self._put(StreamFrame(seq=self.seq, kind="end"))

    async def fail(self, exc: BusError) -> None:
        with contextlib.suppress(BusError):
            await self._put(StreamFrame(seq=self.seq, kind="error", error=error_body(exc)))


class InboxMux:
    """One wildcard subscription that delivers the frames of every stream a connection
    consumes to its reader: no SUB/UNSUB round of protocol messages per stream.

    Each stream gets an inbox under the connection's own prefix; a frame for an inbox nobody
    reads any more (a producer that has not heard the cancel yet) is dropped here.
    """

    def __init__(self, nc: NATSClient) -> None:
        self.nc = nc
        self.prefix = nc.new_inbox() + ".s"
        self._ids = itertools.count()
        self._readers: dict[str, StreamReader[Any, Any]] = {}
        self._sub: Subscription | None = None
        self._lock = asyncio.Lock()

    def new_inbox(self) -> str:
        return f"{self.prefix}.{next(self._ids)}"

    def owns(self, inbox: str) -> bool:
        return inbox.startswith(self.prefix + ".")

    async def attach(self, reader: StreamReader[Any, Any]) -> None:
        if self._sub is None:
            async with self._lock:
                if self._sub is None:
                    self._sub = await self.nc.subscribe(self.prefix + ".*", cb=self._on_msg)
        self._readers[reader.inbox] = reader

    def detach(self, inbox: str) -> None:
        self._readers.pop(inbox, None)

    def reconnected(self) -> None:
        """The connection came back: every open stream may have lost frames meanwhile."""
        for reader in self._readers.values():
            reader.reconnected()

    async def _on_msg(self, msg: Msg) -> None:
        reader = self._readers.get(msg.subject)
        if reader is not None:
            reader.feed(msg.data)

    def __len__(self) -> int:
        return len(self._readers)


class StreamReader(Generic[Rep, Chunk]):
    """Consumes a stream: an async iterator of typed chunks, in order, without duplicates.

    Raises the producer's typed error if the stream ends in an error frame, `BusTimeoutError`
    if no frame arrives within ``idle_timeout``, and `BadReplyError` for malformed frames.
    """

    ack: Rep

    def __init__(
        self,
        nc: NATSClient,
        inbox: str,
        chunk: type[Chunk],
        *,
        idle_timeout: float,
        start_seq: int = 0,
    ) -> None:
        self.nc = nc
        self.inbox = inbox
        self.chunk = chunk
        self.idle_timeout = idle_timeout
        self.next_seq = start_seq
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._early: dict[int, StreamFrame] = {}
        self._gap_since: float | None = None  # when the frame now awaited was first missed
        self._reconnected_at: float | None = None  # the bus reconnected; no frame since
        self._sub: Subscription | None = None
        self._mux: InboxMux | None = None
        self._cancel_subject: str | None = None
        self._stream_id: str | None = None
        self._done = False
        self._moves: dict[int, MovedFrame] = {}  # hand-overs at sequence numbers not reached
        self.producer: MovedFrame | None = None  # the latest producer that took the stream over
        self.moves = 0  # hand-overs followed
        self._unseen: MovedFrame | None = None  # a hand-over `take_moved` has not returned
        self._interrupt: tuple[BusError, int] | None = None  # see `interrupt`

    async def open(self, mux: InboxMux | None = None) -> None:
        """Start receiving: through ``mux`` when it owns the inbox, else a subscription."""
        if mux is not None and mux.owns(self.inbox):
            await mux.attach(self)
            self._mux = mux
            return

        async def on_msg(msg: Msg) -> None:
            self.feed(msg.data)

        self._sub = await self.nc.subscribe(self.inbox, cb=on_msg)

    def feed(self, data: bytes) -> None:
        """One raw frame from the inbox."""
        self._reconnected_at = None
        self._queue.put_nowait(data)

    def reconnected(self) -> None:
        """The bus reconnected: unless a frame arrives within `RECONNECT_GRACE_S`, the stream
        counts as broken (its frames were lost) instead of waiting for the idle timeout."""
        self._reconnected_at = time.monotonic()
        self._queue.put_nowait(_WAKE)  # a reader already waiting recomputes its deadline

    def bind_cancel(self, subject: str | None, stream_id: str | None) -> None:
        self._cancel_subject, self._stream_id = subject, stream_id

    def take_moved(self) -> MovedFrame | None:
        """The latest hand-over followed since the last call (None: the producer is the same)."""
        moved, self._unseen = self._unseen, None
        return moved

    def interrupt(self, exc: BusError) -> None:
        """End the stream with ``exc`` from outside (its producer is known to be gone), once the
        frames already received are delivered, unless they hand the stream over to another
        producer first (a migration: then the producer that went away no longer matters)."""
        if self._done:
            return
        self._interrupt = (exc, self.moves)
        self._queue.put_nowait(_WAKE)

    @property
    def done(self) -> bool:
        return self._done

    def __aiter__(self) -> StreamReader[Rep, Chunk]:
        return self

    async def __anext__(self) -> Chunk:
        while True:
            if self._done:
                raise StopAsyncIteration
            due = self._moves.pop(self.next_seq, None)
            if due is not None:
                self._follow(due)
            frame = self._early.pop(self.next_seq, None) or await self._next_frame()
            if isinstance(frame, MovedFrame):
                self._hold(frame)
                continue
            if frame.seq < self.next_seq:
                continue  # a duplicate, e.g. from the old producer after a migration
            if frame.seq > self.next_seq:
                self._early[frame.seq] = frame
                if len(self._early) > MAX_REORDER:
                    await self._fail()
                    raise BadReplyError(
                        f"stream {self.inbox}: frame {self.next_seq} missing "
                        f"({len(self._early)} later frames buffered)"
                    )
                continue
            self.next_seq += 1
            self._gap_since = None
            if frame.kind in ("data", "last"):
                try:
                    chunk = validate(frame.data, self.chunk, error=BadReplyError)
                except BadReplyError:
                    await self._fail()
                    raise
                if frame.kind == "last":
                    self._done = True
                    await self._unsubscribe()
                return chunk
            self._done = True
            await self._unsubscribe()
            if frame.kind == "end":
                raise StopAsyncIteration
            err = frame.error or ErrorBody(code="internal", message="error frame without body")
            raise error_for_code(err.code, err.message, dict(err.detail))

    def _hold(self, move: MovedFrame) -> None:
        """Follow ``move`` once every frame before its sequence number is delivered."""
        if move.seq < self.next_seq:
            return  # stale: another producer already delivered the frames from there on
        if move.seq == self.next_seq:
            self._follow(move)
            return
        if len(self._moves) >= MAX_MOVES:
            self._moves.pop(min(self._moves))
        self._moves[move.seq] = move

    def _follow(self, move: MovedFrame) -> None:
        self.bind_cancel(move.cancel_subject, move.stream_id)
        self.producer = self._unseen = move
        self.moves += 1

    async def _next_frame(self) -> StreamFrame | MovedFrame:
        started = time.monotonic()
        while True:
            reason, wait = self._deadline(started)
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                # that lands as a frame arrives, and the consumer would read on (a client
                # that left).
                async with asyncio.timeout(wait):
                    data = await self._queue.get()
            except TimeoutError:
                await self._fail()
                raise BusTimeoutError(f"stream {self.inbox}: {reason}") from None
            if data is _WAKE:  # the bus reconnected (the deadline changed), or an interrupt
                await self._interrupted()
                continue
            try:
                return decode_any_frame(data)
            except BadReplyError:
                await self._fail()
                raise

    def _deadline(self, started: float) -> tuple[str, float]:
        """What the next frame's wait is bounded by, and how long it may still last."""
        now = time.monotonic()
        reason = f"no frame within {self.idle_timeout:g}s (waiting for seq {self.next_seq})"
        wait = self.idle_timeout - (now - started)
        if self._early:  # later frames are here: the awaited one is late or lost
            if self._gap_since is None:
                self._gap_since = now
            gap_left = GAP_S - (now - self._gap_since)
            if gap_left < wait:
                reason = f"frame {self.next_seq} lost ({len(self._early)} later frames arrived)"
                wait = gap_left
        if self._reconnected_at is not None and self._queue.empty():
            grace_left = RECONNECT_GRACE_S - (now - self._reconnected_at)
            if grace_left < wait:
                reason = (
                    f"no frame within {RECONNECT_GRACE_S:g}s of the bus reconnecting (waiting "
                    f"for seq {self.next_seq}; frames in flight were lost)"
                )
                wait = grace_left
        return reason, max(wait, 0.0)

    async def _interrupted(self) -> None:
        """Raise the pending interrupt unless the stream changed producer since it came."""
        if self._interrupt is None:
            return
        (exc, moves), self._interrupt = self._interrupt, None
        if moves == self.moves and not self._moves:
            await self._fail()
            raise exc

    async def _fail(self) -> None:
        await self.aclose()

    async def _unsubscribe(self) -> None:
        if self._mux is not None:
            self._mux.detach(self.inbox)
            self._mux = None
        if self._sub is not None:
            sub, self._sub = self._sub, None
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def aclose(self) -> None:
        """Stop consuming; if the stream has not ended, ask the producer to stop."""
        if not self._done and self._cancel_subject and self._stream_id:
            with contextlib.suppress(Exception):
                await self.nc.publish(
                    self._cancel_subject, encode(CancelStream(stream_id=self._stream_id))
                )
        self._done = True
        await self._unsubscribe()

    async def __aenter__(self) -> StreamReader[Rep, Chunk]:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()
