"""SSE framing, and the event-stream response's handling of the end and of disconnects."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import pytest

from services.router.responses import ChatChunkChoice, ChatCompletionChunk
from services.router.sse import (
    DONE,
    ClientDisconnected,
    EventStreamResponse,
    batched,
    event,
    run_until_disconnect,
)

pytestmark = pytest.mark.unit


def test_event_is_one_compact_data_line() -> None:
    assert event({"a": 1, "b": "é"}) == 'data: {"a":1,"b":"é"}\n\n'.encode()
    assert DONE == b"data: [DONE]\n\n"


def test_event_of_a_model_can_leave_fields_out() -> None:
    chunk = ChatCompletionChunk(
        id="c", created=1, model="m", choices=[ChatChunkChoice(delta={"content": "x"})]
    )
    data = json.loads(event(chunk, exclude={"usage"}).removeprefix(b"data: "))
    assert "usage" not in data
    assert data["choices"][0] == {
        "index": 0,
        "delta": {"content": "x"},
        "logprobs": None,
        "finish_reason": None,
    }
    assert json.loads(event(chunk).removeprefix(b"data: "))["usage"] is None


class Client:
    """The ASGI side of one HTTP exchange: what was sent, and a disconnect on demand."""

    def __init__(self) -> None:
        self.sent: list[MutableMapping[str, Any]] = []
        self.gone = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: MutableMapping[str, Any]) -> None:
        self.sent.append(message)

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent)


async def test_stream_ends_normally_and_closes_once() -> None:
    async def events() -> AsyncIterator[bytes]:
        yield b"data: 1\n\n"
        yield DONE

    closes: list[bool] = []

    async def on_close(disconnected: bool) -> None:
        closes.append(disconnected)

    client = Client()
    await EventStreamResponse(events(), on_close)({"type": "http"}, client.receive, client.send)
    assert client.sent[0]["status"] == 200
    headers = dict(client.sent[0]["headers"])
    assert headers[b"content-type"].startswith(b"text/event-stream")
    assert headers[b"cache-control"] == b"no-cache"
    assert client.body == b"data: 1\n\n" + DONE
    assert client.sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert closes == [False]


async def test_disconnect_stops_the_stream_and_reports_it() -> None:
    stopped = asyncio.Event()

    async def events() -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"data: tick\n\n"
                await asyncio.sleep(0.01)
        finally:
            stopped.set()

    closes: list[bool] = []

    async def on_close(disconnected: bool) -> None:
        closes.append(disconnected)

    client = Client()
    response = EventStreamResponse(events(), on_close)
    task = asyncio.create_task(response({"type": "http"}, client.receive, client.send))
    await asyncio.sleep(0.05)
    client.gone.set()
    await asyncio.wait_for(task, 5)
    assert stopped.is_set()
    assert closes == [True]


async def test_run_until_disconnect_returns_the_result() -> None:
    client = Client()

    async def work() -> int:
        return 42

    assert await run_until_disconnect(client.receive, work()) == 42


async def test_run_until_disconnect_cancels_the_work_when_the_client_leaves() -> None:
    client = Client()
    cancelled = asyncio.Event()

    async def work() -> int:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return 0

    asyncio.get_running_loop().call_later(0.02, client.gone.set)
    with pytest.raises(ClientDisconnected):
        await asyncio.wait_for(run_until_disconnect(client.receive, work()), 5)
    assert cancelled.is_set()


async def test_run_until_disconnect_passes_errors_through() -> None:
    client = Client()

    async def work() -> int:
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        await run_until_disconnect(client.receive, work())


async def _events(n: int, pause_s: float = 0.0) -> AsyncIterator[bytes]:
    for i in range(n):
        if pause_s:
            await asyncio.sleep(pause_s)
        yield f"data: {i}\n\n".encode()


def _all(n: int) -> bytes:
    return b"".join(f"data: {i}\n\n".encode() for i in range(n))


async def test_events_ready_together_go_out_in_one_write() -> None:
    assert [b async for b in batched(_events(5))] == [_all(5)]
    assert [b async for b in batched(_events(0))] == []


async def test_events_that_come_apart_go_out_apart() -> None:
    assert [b async for b in batched(_events(3, 0.01))] == [
        b"data: 0\n\n",
        b"data: 1\n\n",
        b"data: 2\n\n",
    ]


async def test_a_slow_writer_sends_what_piled_up_meanwhile_in_order() -> None:
    writes = []
    async for body in batched(_events(50, 0.001)):
        writes.append(body)
        await asyncio.sleep(0.02)  # a busy server
    assert b"".join(writes) == _all(50)
    assert len(writes) < 25


async def test_a_failing_source_fails_the_stream_after_what_it_gave() -> None:
    async def failing() -> AsyncIterator[bytes]:
        yield b"data: a\n\n"
        raise RuntimeError("upstream broke")

    got = []
    with pytest.raises(RuntimeError, match="upstream broke"):
        async for body in batched(failing()):
            got.append(body)
    assert got == [b"data: a\n\n"]


async def test_closing_the_writer_stops_the_source() -> None:
    closed = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        try:
            while True:
                await asyncio.sleep(0.001)
                yield b"x"
        finally:
            closed.set()

    stream = batched(endless())
    assert await anext(stream)
    await stream.aclose()
    assert closed.is_set()
