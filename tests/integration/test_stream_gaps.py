"""A stream frame lost on the bus (a NATS reconnect drops what was in flight) is reported
within seconds, even while later frames keep arriving, so the router can resume the
generation instead of waiting for the idle timeout."""

from __future__ import annotations

import asyncio
import time

import pytest

from libs.common.embedded import EmbeddedNats
from libs.protocol import Bus, route
from libs.protocol.errors import BusTimeoutError
from libs.protocol.stream import GAP_S, RECONNECT_GRACE_S, StreamReader, StreamWriter

from .test_bus import COUNT, CountChunk, CountRequest, EchoReply, Producer

pytestmark = pytest.mark.integration


async def test_a_frame_that_stays_missing_fails_the_stream_within_the_gap_bound(
    bus: Bus,
) -> None:
    inbox = bus.nc.new_inbox()
    reader: StreamReader[EchoReply, CountChunk] = StreamReader(
        bus.nc, inbox, CountChunk, idle_timeout=60.0
    )
    await reader.open()
    writer = StreamWriter(bus.nc, inbox)

    async def produce() -> None:
        for i in range(200):  # a producer that goes on after losing frame 2
            if i == 2:
                writer.seq += 1  # published into a dead connection: never delivered
                continue
            await writer.send(CountChunk(i=i))
            await asyncio.sleep(0.02)

    producing = asyncio.create_task(produce())
    got = []
    t0 = time.monotonic()
    with pytest.raises(BusTimeoutError, match="frame 2 lost"):
        async for chunk in reader:
            got.append(chunk.i)
    took = time.monotonic() - t0
    producing.cancel()
    assert got == [0, 1]
    assert took < GAP_S + 1.0  # not the 60 s idle timeout
    assert reader.done


async def test_frames_that_arrive_out_of_order_are_reordered_not_failed(bus: Bus) -> None:
    inbox = bus.nc.new_inbox()
    reader: StreamReader[EchoReply, CountChunk] = StreamReader(
        bus.nc, inbox, CountChunk, idle_timeout=10.0
    )
    await reader.open()
    late = StreamWriter(bus.nc, inbox, start_seq=0)
    early = StreamWriter(bus.nc, inbox, start_seq=1)
    await early.send(CountChunk(i=1))
    await early.send(CountChunk(i=2), last=True)
    await asyncio.sleep(0.3)  # well inside the gap bound (a migration's overlap)
    await late.send(CountChunk(i=0))
    assert [c.i async for c in reader] == [0, 1, 2]


async def test_a_stream_silent_after_a_reconnect_fails_within_the_grace(
    own_nats: EmbeddedNats,
) -> None:
    """The producer's frames sent while NATS was down were flushed before the consumer's
    subscription came back (lost): the consumer hears nothing more, and says so in seconds."""
    consumer = await Bus.connect(own_nats.url, name="consumer", root="gaps", request_timeout=2)
    producer = await Bus.connect(own_nats.url, name="producer", root="gaps", request_timeout=2)
    try:
        await producer.serve("test", [route(COUNT, Producer(), who="g")])
        # A slow producer: frame 0 now, the rest long after the idle bound of this test.
        reader = await consumer.stream(
            COUNT, CountRequest(n=3, delay=30.0), who="g", idle_timeout=60.0
        )
        own_nats.kill()
        own_nats.restart()
        t0 = time.monotonic()
        with pytest.raises(BusTimeoutError, match="reconnecting"):
            async for _ in reader:
                pass
        assert time.monotonic() - t0 < RECONNECT_GRACE_S + 5.0  # not the 60 s idle timeout
    finally:
        await consumer.close()
        await producer.close()
