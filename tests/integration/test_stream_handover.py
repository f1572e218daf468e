"""A live migration's new producer announces itself in the stream (in-band), so the consumer
follows it without any monitoring event: real workers hand a stream over and the reader
names the destination and cancels there; the router follows a hand-over nobody announced on
``sllm.events.>`` and ignores the old instance's stop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from libs.cluster import ClusterState
from libs.common.embedded import EmbeddedNats, EmbeddedRedis
from libs.protocol import Bus, Stream
from libs.protocol.endpoints import WORKER_GENERATE
from libs.protocol.errors import StreamHandedOver, UnavailableError
from libs.protocol.events import InstanceStoppedEvent
from libs.protocol.messages import GenerateReply, GenerateRequest, TokenChunk
from libs.protocol.stream import MovedFrame, StreamReader, StreamWriter

from .router_stubs import MODEL, ready_instance
from .test_bus import CountChunk, EchoReply
from .test_migration import (
    DST,
    SRC,
    eventually,
    ids,
    migrate,
    open_stream,
    read_until,
    request,
    solo,
    workers,
)
from .test_router_failover import (
    PROMPT,
    Setup,
    TokenWorker,
    client,
    expected,
    prompt_ids,
    router,
    setup,  # noqa: F401 - the fixture
    stream_text,
    token_at,
    watch,
)

pytestmark = pytest.mark.integration


def moved_to(seq: int, instance_id: str) -> MovedFrame:
    return MovedFrame(
        seq=seq,
        cancel_subject="test.cancel",
        stream_id=f"s-{instance_id}",
        instance_id=instance_id,
        worker_id=f"w-{instance_id}",
    )


async def reader_on(bus: Bus) -> StreamReader[EchoReply, CountChunk]:
    reader: StreamReader[EchoReply, CountChunk] = StreamReader(
        bus.nc, bus.nc.new_inbox(), CountChunk, idle_timeout=10.0
    )
    await reader.open()
    return reader


async def test_a_reader_follows_a_hand_over_once_the_frames_before_it_are_delivered(
    bus: Bus,
) -> None:
    reader = await reader_on(bus)
    old = StreamWriter(bus.nc, reader.inbox)
    new = StreamWriter(bus.nc, reader.inbox, start_seq=2, announce=moved_to(2, "i-new"))
    await old.send(CountChunk(i=0))
    await new.send(CountChunk(i=2))  # the hand-over and frame 2 overtake frame 1
    await new.send(CountChunk(i=3), last=True)
    await old.send(CountChunk(i=1))
    got, moves = [], []
    async for chunk in reader:
        got.append(chunk.i)
        moved = reader.take_moved()
        moves.append(moved.instance_id if moved is not None else None)
    assert got == [0, 1, 2, 3]
    assert moves == [None, None, "i-new", None]  # followed at frame 2, not when it arrived
    assert reader.producer is not None
    assert (reader.producer.worker_id, reader.producer.seq) == ("w-i-new", 2)


async def test_a_writer_that_never_publishes_never_announces_itself(bus: Bus) -> None:
    # A destination stopped before its first frame (an aborted commit) must not claim the
    # stream: the announcement travels only with a frame.
    reader = await reader_on(bus)
    StreamWriter(bus.nc, reader.inbox, start_seq=1, announce=moved_to(1, "i-quiet"))
    old = StreamWriter(bus.nc, reader.inbox)
    await old.send(CountChunk(i=0))
    await old.send(CountChunk(i=1), last=True)
    assert [c.i async for c in reader] == [0, 1]
    assert reader.producer is None


async def test_an_interrupt_for_the_old_producer_is_ignored_after_a_hand_over(bus: Bus) -> None:
    reader = await reader_on(bus)
    new = StreamWriter(bus.nc, reader.inbox, announce=moved_to(0, "i-new"))
    await new.send(CountChunk(i=0))
    await bus.nc.flush()
    await asyncio.sleep(0.1)  # the hand-over is in the reader's queue, not yet read
    reader.interrupt(UnavailableError("the old instance stopped"))
    await new.send(CountChunk(i=1), last=True)
    assert [c.i async for c in reader] == [0, 1]


async def test_an_interrupt_ends_the_stream_after_the_frames_already_received(
    bus: Bus,
) -> None:
    reader = await reader_on(bus)
    writer = StreamWriter(bus.nc, reader.inbox)
    await writer.send(CountChunk(i=0))
    await bus.nc.flush()
    await asyncio.sleep(0.1)
    reader.interrupt(UnavailableError("its instance stopped"))
    assert (await reader.__anext__()).i == 0
    with pytest.raises(UnavailableError, match="its instance stopped"):
        await reader.__anext__()
    assert reader.done


async def test_a_migrated_stream_names_its_new_producer_in_band_and_cancels_there(
    nats_server: Any, redis_server: Any, root: str, bus: Bus, state: ClusterState, checkpoint: Any
) -> None:
    async with workers(nats_server, redis_server, root, bus, state, checkpoint) as pair:
        want = await solo(bus, request("solo"))
        got: list[TokenChunk] = []
        async with await open_stream(bus, request("moving")) as reader:
            await read_until(reader, got, 4)
            assert reader.producer is None  # the producer that began the stream
            reply = await migrate(bus)
            assert [g.outcome for g in reply.generations] == ["committed"]
            await read_until(reader, got, len(ids(got)) + 2)
            moved = reader.producer
            assert moved is not None
            assert (moved.instance_id, moved.worker_id) == ("i-dst", DST)
            assert moved.seq <= reader.next_seq
        # Leaving early cancelled the stream where it is produced now: the destination.
        await eventually(lambda: pair.services[DST].running == {})
        assert pair.services[SRC].running == {}
        assert ids(got) == ids(want)[: len(ids(got))]


class HandingOver(TokenWorker):
    """A stand-in worker that, after ``hand_at`` chunks, hands the stream over to ``to`` as a
    live migration does (the new producer continues the numbering; nothing is emitted)."""

    hand_at: int = 3
    to: TokenWorker | None = None
    handed: asyncio.Event

    async def generate(self, req: GenerateRequest) -> Stream[GenerateReply, TokenChunk]:
        stream = await super().generate(req)
        self.handed = asyncio.Event()

        async def chunks() -> AsyncIterator[TokenChunk]:
            n = 0
            async for chunk in stream.chunks:
                yield chunk
                n += 1
                if n == self.hand_at:
                    await self._hand_over(req, n)
                    raise StreamHandedOver

        return Stream(ack=stream.ack, chunks=chunks())

    async def _hand_over(self, req: GenerateRequest, n: int) -> None:
        dest = self.to
        assert dest is not None
        assert dest.bus is not None
        assert req.params.seed is not None
        prompt = list(req.prompt_token_ids or prompt_ids(req.prompt or ""))
        done = [token_at(req.params.seed, len(prompt) + i) for i in range(n)]
        resumed = req.model_copy(
            update={"generated_token_ids": done, "start_seq": req.start_seq + n}
        )
        taken = await dest.generate(resumed)
        dest.bus.continue_stream(
            WORKER_GENERATE,
            taken.chunks,
            inbox=req.inbox,
            start_seq=resumed.start_seq,
            instance_id=dest.instance_id,
            worker_id=dest.worker_id,
        )
        self.handed.set()


async def test_the_router_follows_a_hand_over_announced_only_in_the_stream(
    setup: Setup,  # noqa: F811 - the fixture
    nats_server: EmbeddedNats,
    redis_server: EmbeddedRedis,
    root: str,
) -> None:
    # No `migration.committed` event is ever published: the router learns of the hand-over
    # from the stream alone; the old instance's stop (an event, a hint) must not end it.
    await ready_instance(setup.state, instance_id="i-a", worker_id="wa")  # the only ready one
    a = HandingOver(setup.nats_url, setup.root, setup.state, "wa", "i-a", delay=0.03)
    b = TokenWorker(setup.nats_url, setup.root, setup.state, "wb", "i-b", delay=0.03, notify_at=4)
    for w in (a, b):
        await w.start()
        setup.workers.append(w)
    a.to = b
    failovers, completed = await watch(setup.bus)
    async with router(nats_server, redis_server, root) as r, client(r) as c:

        async def stop_the_source() -> None:
            await asyncio.wait_for(b.reached.wait(), 30)
            await setup.bus.emit(
                InstanceStoppedEvent(instance_id="i-a", model=MODEL, worker_id="wa", reason="x")
            )

        stopping = asyncio.create_task(stop_the_source())
        text, _, finish = await stream_text(c, prompt=PROMPT, max_tokens=12, temperature=0)
        await stopping
        (req,) = a.requests
    assert req.params.seed is not None
    assert text == expected(req.params.seed, prompt_ids(PROMPT), 12)
    assert finish == "length"
    assert len(b.requests) == 1  # the hand-over, not a failover's resume
    assert failovers.items == []
    done = await completed.wait_for(lambda e: True)
    assert (done.status, done.instance_id, done.worker_id) == ("ok", "i-b", "wb")
