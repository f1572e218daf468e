"""Reading a request body on the hot path: chunks, the size limit, a slow or departed client."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from services.router.errors import ApiError
from services.router.hotpath import read_body
from services.router.sse import ClientDisconnected


def receiving(*messages: dict[str, Any], then_wait: bool = False) -> Callable[[], Awaitable[Any]]:
    """An ASGI ``receive`` giving ``messages`` in turn, then waiting forever (or failing)."""
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        if queue:
            return queue.pop(0)
        if then_wait:
            await asyncio.Event().wait()
        raise AssertionError("read past the end of the body")

    return receive


def body(chunk: bytes, more: bool = False) -> dict[str, Any]:
    return {"type": "http.request", "body": chunk, "more_body": more}


async def test_the_chunks_of_a_body_are_joined() -> None:
    got = await read_body(receiving(body(b'{"a"', True), body(b": 1", True), body(b"}")), 100)
    assert got == b'{"a": 1}'


async def test_a_body_past_the_limit_is_413() -> None:
    with pytest.raises(ApiError) as info:
        await read_body(receiving(body(b"x" * 60, True), body(b"x" * 60)), 100)
    assert info.value.status == 413
    assert "100 bytes" in info.value.message


async def test_a_client_that_leaves_before_the_end_of_its_body() -> None:
    with pytest.raises(ClientDisconnected):
        await read_body(receiving(body(b"x", True), {"type": "http.disconnect"}), 100)


async def test_a_body_that_never_ends_is_408_after_the_timeout() -> None:
    with pytest.raises(ApiError) as info:
        await read_body(receiving(body(b"x", True), then_wait=True), 100, timeout=0.05)
    assert info.value.status == 408
