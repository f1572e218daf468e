"""A lean HTTP/1.1 client for streamed POSTs (server-sent events) over pooled keep-alive
connections.

The benchmark's first version used httpx: at 50 requests/s with a few hundred streams open,
httpcore's pool spent 85 % of the client's time matching requests to connections
(`_assign_requests_to_connections`, quadratic in open connections), and the client saturated
before anything it measured. This one does no matching: a connection is idle or in use.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

# uvicorn closes a keep-alive connection idle for 5 s: reusing one that old races its close.
STALE_S = 3.0


class HttpError(Exception):
    """A non-200 answer, or a connection that broke mid-answer."""


class SsePool:
    """Keep-alive connections to one ``host:port``."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        # (reader, writer, when it went idle), most recently used last
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []

    async def post_events(self, path: str, body: bytes) -> AsyncIterator[bytes]:
        """POST ``body`` (JSON) to ``path``; yields the ``data:`` payload of every event."""
        reader, writer = await self._take()
        reusable = False
        try:
            head = (
                f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            writer.write(head + body)
            raw = await reader.readuntil(b"\r\n\r\n")
            status, headers = _parse_head(raw)
            chunked = headers.get("transfer-encoding", "").lower() == "chunked"
            length = int(headers.get("content-length", "-1"))
            if status != 200:
                text = await _read_body(reader, chunked, length)
                raise HttpError(f"HTTP {status}: {text[:120].decode(errors='replace')}")
            pending = b""
            async for piece in _body(reader, chunked, length):
                pending += piece
                *events, pending = pending.split(b"\n\n")
                for event in events:
                    for line in event.split(b"\n"):
                        if line.startswith(b"data: "):
                            yield line[6:]
            reusable = headers.get("connection", "").lower() != "close"
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            raise HttpError(repr(exc)) from None
        finally:
            if reusable:
                self._idle.append((reader, writer, time.monotonic()))
            else:
                writer.close()

    async def _take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """An idle connection the server has not timed out yet, or a new one."""
        now = time.monotonic()
        while self._idle:
            reader, writer, since = self._idle.pop()
            if now - since < STALE_S and not reader.at_eof():
                return reader, writer
            writer.close()
        return await asyncio.open_connection(self.host, self.port, limit=1 << 20)

    async def close(self) -> None:
        for _, writer, _ in self._idle:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        self._idle.clear()


def _parse_head(raw: bytes) -> tuple[int, dict[str, str]]:
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return status, headers


async def _body(reader: asyncio.StreamReader, chunked: bool, length: int) -> AsyncIterator[bytes]:
    if not chunked:
        if length >= 0:
            yield await reader.readexactly(length)
        else:
            yield await reader.read()
        return
    while True:
        size = int((await reader.readline()).split(b";")[0], 16)
        if size == 0:
            await reader.readline()  # the empty trailer
            return
        data = await reader.readexactly(size + 2)
        yield data[:-2]


async def _read_body(reader: asyncio.StreamReader, chunked: bool, length: int) -> bytes:
    return b"".join([piece async for piece in _body(reader, chunked, length)])
