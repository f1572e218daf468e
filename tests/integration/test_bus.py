"""The bus layer against a real nats-server: replies, bad input, errors, streams, events."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import msgpack
import pytest
from pydantic import Field

from libs.protocol import Bus, Endpoint, Stream, StreamEndpoint, route
from libs.protocol.errors import (
    BadReplyError,
    BadRequestError,
    BusTimeoutError,
    InternalError,
    NoRespondersError,
    NotFoundError,
    OverloadedError,
)
from libs.protocol.events import ServiceStartedEvent
from libs.protocol.schema import Message, encode
from libs.protocol.stream import StreamReader, StreamWriter

pytestmark = pytest.mark.integration


class EchoRequest(Message):
    text: str
    times: int = Field(default=1, ge=1, le=100)
    delay: float = 0.0


class EchoReply(Message):
    text: str


class CountRequest(Message):
    n: int
    fail_at: int = -1
    delay: float = 0.0
    inbox: str = ""
    start_seq: int = 0


class CountChunk(Message):
    i: int


ECHO = Endpoint("echo", "test.echo", EchoRequest, EchoReply)
SILENT = Endpoint("silent", "test.silent", EchoRequest, EchoReply)
BOOM = Endpoint("boom", "test.boom", EchoRequest, EchoReply)
MISSING = Endpoint("missing", "test.missing", EchoRequest, EchoReply)
COUNT = StreamEndpoint("count", "test.{who}.count", CountRequest, EchoReply, CountChunk)


async def echo(req: EchoRequest) -> EchoReply:
    if req.delay:
        await asyncio.sleep(req.delay)
    return EchoReply(text=req.text * req.times)


async def boom(req: EchoRequest) -> EchoReply:
    if req.text == "missing":
        raise NotFoundError("no such thing", detail={"thing": req.text})
    raise ValueError("handler bug")


async def never(req: EchoRequest) -> EchoReply:
    await asyncio.sleep(3600)
    raise AssertionError("unreachable")


class Producer:
    """A stream handler that records whether its generator was closed (slot freed)."""

    def __init__(self) -> None:
        self.closed = asyncio.Event()

    async def __call__(self, req: CountRequest) -> Stream[EchoReply, CountChunk]:
        async def chunks() -> AsyncIterator[CountChunk]:
            try:
                for i in range(req.n):
                    if i == req.fail_at:
                        raise NotFoundError(f"chunk {i} is missing")
                    if req.delay:
                        await asyncio.sleep(req.delay)
                    yield CountChunk(i=i)
            finally:
                self.closed.set()

        return Stream(ack=EchoReply(text="accepted"), chunks=chunks())


@pytest.fixture
async def server(bus: Bus) -> Producer:
    producer = Producer()
    await bus.serve(
        "test",
        [
            route(ECHO, echo),
            route(SILENT, never),
            route(BOOM, boom),
            route(COUNT, producer, who="a"),
        ],
    )
    return producer


async def test_request_reply_roundtrip(bus: Bus, server: Producer) -> None:
    reply = await bus.request(ECHO, EchoRequest(text="ab", times=3))
    assert reply == EchoReply(text="ababab")


async def test_malformed_bytes_give_bad_request_and_service_survives(
    bus: Bus, server: Producer
) -> None:
    subject = ECHO.subject(bus.root)
    with pytest.raises(BadRequestError, match="undecodable msgpack"):
        await bus.request_msg(subject, b"\xc1\xff\x00garbage")
    with pytest.raises(BadRequestError, match="expected a map"):
        await bus.request_msg(subject, msgpack.packb([1, 2, 3]))
    assert (await bus.request(ECHO, EchoRequest(text="still here"))).text == "still here"


async def test_wrong_type_gives_bad_request(bus: Bus, server: Producer) -> None:
    subject = ECHO.subject(bus.root)
    with pytest.raises(BadRequestError, match="times"):
        await bus.request_msg(subject, msgpack.packb({"text": "x", "times": "3"}))
    with pytest.raises(BadRequestError, match="text"):
        await bus.request_msg(subject, msgpack.packb({"times": 3}))


async def test_unknown_field_gives_bad_request(bus: Bus, server: Producer) -> None:
    subject = ECHO.subject(bus.root)
    with pytest.raises(BadRequestError, match="surprise"):
        await bus.request_msg(subject, msgpack.packb({"text": "x", "surprise": 1}))


async def test_out_of_range_value_gives_bad_request(bus: Bus, server: Producer) -> None:
    subject = ECHO.subject(bus.root)
    with pytest.raises(BadRequestError, match="times"):
        await bus.request_msg(subject, msgpack.packb({"text": "x", "times": 10_000}))


async def test_handler_that_raises_gives_typed_errors(bus: Bus, server: Producer) -> None:
    with pytest.raises(InternalError, match="handler bug"):
        await bus.request(BOOM, EchoRequest(text="x"))
    with pytest.raises(NotFoundError) as info:
        await bus.request(BOOM, EchoRequest(text="missing"))
    assert info.value.detail["thing"] == "missing"
    assert (await bus.request(ECHO, EchoRequest(text="ok"))).text == "ok"


async def test_silent_responder_times_out_without_hanging(bus: Bus, server: Producer) -> None:
    started = time.monotonic()
    with pytest.raises(BusTimeoutError, match=r"within 0\.3s"):
        await bus.request(SILENT, EchoRequest(text="x"), timeout=0.3)
    assert time.monotonic() - started < 2.0


async def test_no_responders_is_reported_at_once(bus: Bus, server: Producer) -> None:
    started = time.monotonic()
    with pytest.raises(NoRespondersError):
        await bus.request(MISSING, EchoRequest(text="x"), timeout=5)
    assert time.monotonic() - started < 2.0


async def test_garbage_reply_gives_bad_reply(bus: Bus) -> None:
    async def liar(msg: object) -> None:
        await msg.respond(b"\x92\x01")  # type: ignore[attr-defined]

    await bus.nc.subscribe(ECHO.subject(bus.root), cb=liar)
    with pytest.raises(BadReplyError):
        await bus.request(ECHO, EchoRequest(text="x"))


async def test_slow_handler_does_not_block_others(bus: Bus, server: Producer) -> None:
    slow = asyncio.create_task(bus.request(ECHO, EchoRequest(text="slow", delay=0.5)))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    assert (await bus.request(ECHO, EchoRequest(text="fast"))).text == "fast"
    assert time.monotonic() - started < 0.4
    assert (await slow).text == "slow"


async def test_concurrency_limit_answers_overloaded(nats_server, root: str) -> None:
    async with _bus(nats_server.url, root) as srv, _bus(nats_server.url, root) as cli:
        await srv.serve("test", [route(ECHO, echo)], max_concurrency=1)
        slow = asyncio.create_task(cli.request(ECHO, EchoRequest(text="a", delay=0.5)))
        await asyncio.sleep(0.1)
        with pytest.raises(OverloadedError):
            await cli.request(ECHO, EchoRequest(text="b"))
        assert (await slow).text == "a"


async def test_stream_delivers_chunks_in_order_then_ends(bus: Bus, server: Producer) -> None:
    async with await bus.stream(COUNT, CountRequest(n=50), who="a") as reader:
        assert reader.ack.text == "accepted"
        got = [c.i async for c in reader]
    assert got == list(range(50))
    assert reader.next_seq == 51  # 50 data frames + the end marker


# The same stream, but its producer marks the chunk with i == 4 as the last one.
COUNT_TO_4 = StreamEndpoint(
    "count4", "test.{who}.count4", CountRequest, EchoReply, CountChunk, ends=lambda c: c.i == 4
)


async def test_last_chunk_ends_the_stream_without_an_end_frame(bus: Bus) -> None:
    producer = Producer()
    await bus.serve("test4", [route(COUNT_TO_4, producer, who="a")])
    async with await bus.stream(COUNT_TO_4, CountRequest(n=50), who="a") as reader:
        got = [c.i async for c in reader]
        assert reader.done
    assert got == [0, 1, 2, 3, 4]
    assert reader.next_seq == 5  # five data frames, the last one also ended the stream
    await asyncio.wait_for(producer.closed.wait(), 5)  # the producer stopped at the last chunk


async def test_many_concurrent_streams_share_one_inbox_subscription(
    bus: Bus, server: Producer
) -> None:
    async def one(n: int) -> list[int]:
        async with await bus.stream(COUNT, CountRequest(n=n), who="a") as reader:
            return [c.i async for c in reader]

    assert await one(1) == [0]  # sets up the subscriptions a first stream needs
    subs_before = len(bus.nc._subs)
    results = await asyncio.gather(*(one(n) for n in range(1, 41)))
    assert results == [list(range(n)) for n in range(1, 41)]
    assert bus._mux is not None
    assert len(bus._mux) == 0  # every reader detached
    assert len(bus.nc._subs) == subs_before  # no subscription per stream


async def test_frames_for_a_closed_stream_are_dropped(bus: Bus, server: Producer) -> None:
    async with await bus.stream(COUNT, CountRequest(n=3), who="a") as reader:
        assert [c.i async for c in reader] == [0, 1, 2]
    # A late producer (one that has not heard the cancel) writes to the old inbox: nobody
    # reads it, and the next stream is unaffected.
    await StreamWriter(bus.nc, reader.inbox, start_seq=3).send(CountChunk(i=99))
    async with await bus.stream(COUNT, CountRequest(n=2), who="a") as again:
        assert [c.i async for c in again] == [0, 1]


async def test_slow_first_chunk_does_not_delay_the_ack(bus: Bus, server: Producer) -> None:
    """The ack waits at most a few milliseconds for the first frame to travel with it."""
    t = time.monotonic()
    reader = await bus.stream(COUNT, CountRequest(n=2, delay=1.0), who="a")
    acked_after = time.monotonic() - t
    async with reader:
        assert [c.i async for c in reader] == [0, 1]
    assert acked_after < 0.9  # the first chunk took 1 s; the ack did not wait for it


async def test_stream_error_mid_way_raises_typed_error_after_chunks(
    bus: Bus, server: Producer
) -> None:
    got = []
    with pytest.raises(NotFoundError, match="chunk 3 is missing"):
        async with await bus.stream(COUNT, CountRequest(n=10, fail_at=3), who="a") as reader:
            async for chunk in reader:
                got.append(chunk.i)
    assert got == [0, 1, 2]


async def test_consumer_leaving_early_stops_the_producer(bus: Bus, server: Producer) -> None:
    async with await bus.stream(COUNT, CountRequest(n=10_000, delay=0.01), who="a") as reader:
        async for chunk in reader:
            if chunk.i == 3:
                break
    await asyncio.wait_for(server.closed.wait(), 5)


async def test_consumer_cancelled_before_the_ack_still_stops_the_producer(
    nats_server, root: str
) -> None:
    """A caller cancelled between sending a stream request and its ack (a client that went away
    during the set-up) must not leave the producer running for nobody."""
    producer = Producer()

    async def slow_ack(req: CountRequest) -> Stream[EchoReply, CountChunk]:
        await asyncio.sleep(0.3)
        return await producer(req)

    async with _bus(nats_server.url, root) as srv, _bus(nats_server.url, root) as cli:
        await srv.serve("test", [route(COUNT, slow_ack, who="a")])
        starting = asyncio.ensure_future(
            cli.stream(COUNT, CountRequest(n=10_000, delay=0.01), who="a")
        )
        await asyncio.sleep(0.1)
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting
        await asyncio.wait_for(producer.closed.wait(), 5)


async def test_stream_idle_timeout(bus: Bus, server: Producer) -> None:
    with pytest.raises(BusTimeoutError, match="no frame within"):
        async with await bus.stream(
            COUNT, CountRequest(n=5, delay=2.0), who="a", idle_timeout=0.3
        ) as reader:
            async for _ in reader:
                pass
    await asyncio.wait_for(server.closed.wait(), 5)  # the timeout also cancelled the producer


async def test_stream_request_errors_are_typed(bus: Bus, server: Producer) -> None:
    with pytest.raises(NoRespondersError):
        await bus.stream(COUNT, CountRequest(n=1), who="nobody")
    with pytest.raises(BadRequestError):
        await bus.request_msg(COUNT.subject(bus.root, who="a"), encode(CountRequest(n=1)))


async def test_reader_drops_duplicates_and_reorders(bus: Bus) -> None:
    """Two producers (as around a migration) overlap and interleave: the reader sees each
    sequence number exactly once, in order."""
    inbox = bus.nc.new_inbox()
    reader: StreamReader[EchoReply, CountChunk] = StreamReader(
        bus.nc, inbox, CountChunk, idle_timeout=2
    )
    await reader.open()
    old, new = StreamWriter(bus.nc, inbox), StreamWriter(bus.nc, inbox, start_seq=3)
    for i in range(5):  # the old producer overshoots to seq 4
        await old.send(CountChunk(i=i))
    for i in range(3, 6):  # the new one restarts at 3 (duplicates 3 and 4)
        await new.send(CountChunk(i=i))
    await new.end()
    got = [c.i async for c in reader]
    assert got == [0, 1, 2, 3, 4, 5]


async def test_malformed_frame_gives_bad_reply(bus: Bus) -> None:
    inbox = bus.nc.new_inbox()
    reader: StreamReader[EchoReply, CountChunk] = StreamReader(
        bus.nc, inbox, CountChunk, idle_timeout=2
    )
    await reader.open()
    await bus.nc.publish(inbox, b"not msgpack \xc1")
    with pytest.raises(BadReplyError):
        await reader.__anext__()


async def test_typed_subscribe_drops_bad_messages_and_continues(bus: Bus) -> None:
    got: list[EchoReply] = []
    subject = bus.subjects.event("test.pubsub")
    await bus.subscribe(subject, EchoReply, _append(got))
    await bus.nc.publish(subject, b"\xc1garbage")
    await bus.nc.publish(subject, msgpack.packb({"text": 1}))
    await bus.publish(subject, EchoReply(text="good"))
    await _until(lambda: bool(got))
    assert got == [EchoReply(text="good")]


async def test_events_are_plain_json_and_retained_in_jetstream(bus: Bus) -> None:
    await bus.ensure_event_stream()
    raw: list[dict[str, object]] = []

    async def on_raw(msg: object) -> None:
        raw.append(json.loads(msg.data))  # type: ignore[attr-defined]

    await bus.nc.subscribe(bus.subjects.all_events, cb=on_raw)
    await bus.emit(ServiceStartedEvent(service="worker", version="1.2.3"))
    await _until(lambda: bool(raw))
    assert raw[0]["kind"] == "service.started"
    assert raw[0]["service"] == "worker"
    assert raw[0]["source"] == bus.instance_id

    js = bus.nc.jetstream()
    sub = await js.subscribe(bus.subjects.all_events, ordered_consumer=True)
    replayed = await sub.next_msg(timeout=5)
    assert json.loads(replayed.data)["kind"] == "service.started"
    await sub.unsubscribe()


async def test_nats_restart_client_reconnects_and_outage_request_times_out(
    own_nats, root: str
) -> None:
    async with _bus(own_nats.url, root) as srv, _bus(own_nats.url, root) as cli:
        await srv.serve("test", [route(ECHO, echo)])
        assert (await cli.request(ECHO, EchoRequest(text="before"))).text == "before"

        own_nats.kill()
        started = time.monotonic()
        with pytest.raises(BusTimeoutError):
            await cli.request(ECHO, EchoRequest(text="during"), timeout=0.5)
        assert time.monotonic() - started < 2.0

        own_nats.start()
        await _until(lambda: cli.connected and srv.connected, timeout=10)
        # The server's subscriptions come back with the connection: no code of ours re-serves.
        reply = await _retry(lambda: cli.request(ECHO, EchoRequest(text="after"), timeout=1))
        assert reply.text == "after"


async def test_connect_to_dead_server_fails_fast_with_typed_error() -> None:
    from libs.common.embedded import free_port
    from libs.protocol.errors import UnavailableError

    started = time.monotonic()
    with pytest.raises(UnavailableError):
        await Bus.connect(f"nats://127.0.0.1:{free_port()}", name="t", connect_timeout=1.0)
    assert time.monotonic() - started < 3.0


# --- helpers ------------------------------------------------------------------------------


class _bus:
    def __init__(self, url: str, root: str) -> None:
        self.url, self.root = url, root

    async def __aenter__(self) -> Bus:
        self.b = await Bus.connect(self.url, name="t", root=self.root, request_timeout=2)
        return self.b

    async def __aexit__(self, *exc: object) -> None:
        await self.b.close()


def _append(into: list[EchoReply]):
    async def handler(item: EchoReply) -> None:
        into.append(item)

    return handler


async def _until(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def _retry(call, attempts: int = 20):
    for i in range(attempts):
        try:
            return await call()
        except (BusTimeoutError, NoRespondersError):
            if i == attempts - 1:
                raise
            await asyncio.sleep(0.2)
    raise AssertionError("unreachable")
