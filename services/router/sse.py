"""Server-sent events, and noticing that the HTTP client went away.

Starlette's `StreamingResponse` notices a disconnect only by cancelling the body iterator from
inside a task group, which leaves closing the worker's stream to chance. Here the response
itself watches for ``http.disconnect`` and then runs ``on_close`` from a task that is not
being cancelled, so the worker is always told to stop.

Events that are ready together go out in one write (`batched`): a write costs the server far
more than an event (at 200 requests/s, one write per token was the router's largest cost), and
a busy router then writes once per burst instead of once per token; an idle one still sends
each event the moment it is ready.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from pydantic import BaseModel
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

log = logging.getLogger(__name__)

T = TypeVar("T")

DONE = b"data: [DONE]\n\n"


def event(payload: BaseModel | dict[str, Any], *, exclude: set[str] | None = None) -> bytes:
    """One SSE ``data:`` event carrying ``payload`` as compact JSON."""
    if isinstance(payload, BaseModel):
        body = payload.model_dump_json(exclude=exclude)
    else:
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return b"data: " + body.encode() + b"\n\n"


async def batched(events: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
    """``events`` joined: each item is every event that was ready when the last one had been
    taken (at least one). ``events`` runs in a task of its own, ended with this generator."""
    ready: collections.deque[bytes] = collections.deque()
    wake = asyncio.Event()
    ended: list[BaseException | None] = []  # the producer's end: None, or what it raised

    async def produce() -> None:
        try:
            async for data in events:
                ready.append(data)
                wake.set()
        except Exception as exc:
            ended.append(exc)
        else:
            ended.append(None)
        finally:
            wake.set()

    producer = asyncio.ensure_future(produce())
    try:
        while True:
            if not ready and not ended:
                wake.clear()
                await wake.wait()
            if ready:
                body = b"".join(ready)
                ready.clear()
                yield body
            elif ended:
                if ended[0] is not None:
                    raise ended[0]
                return
    finally:
        producer.cancel()
        await asyncio.gather(producer, return_exceptions=True)


class ClientDisconnected(Exception):
    """The HTTP client closed the connection before the answer was ready."""


async def _until_disconnect(receive: Receive) -> None:
    # After the body has been read, the only message left is the disconnect.
    while (await receive())["type"] != "http.disconnect":
        pass


async def run_until_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it and raise `ClientDisconnected`."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnect(receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)
    if task.cancelled():
        raise ClientDisconnected()
    return task.result()


class EventStreamResponse(Response):
    """``text/event-stream`` from an async iterator of encoded events; ``on_close(disconnected)``
    runs once at the end, whatever ended it."""

    media_type = "text/event-stream"

    def __init__(
        self,
        events: AsyncIterator[bytes],
        on_close: Callable[[bool], Awaitable[None]],
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.events = events
        self.on_close = on_close
        self.status_code = 200
        self.background = None
        self.init_headers(
            {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})}
        )

    async def _pump(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        async for data in batched(self.events):
            await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pump = asyncio.ensure_future(self._pump(send))
        watcher = asyncio.ensure_future(_until_disconnect(receive))
        disconnected = False
        try:
            await asyncio.wait({pump, watcher}, return_when=asyncio.FIRST_COMPLETED)
            disconnected = not pump.done() or isinstance(pump.exception(), OSError)
        finally:
            for task in (pump, watcher):
                task.cancel()
            await asyncio.gather(pump, watcher, return_exceptions=True)
            aclose = getattr(self.events, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
            await self.on_close(disconnected)
        if not disconnected and not pump.cancelled() and pump.exception() is not None:
            log.error("event stream failed", exc_info=pump.exception())
