"""What integration tests watch a service with: a wait until a condition holds, a wait for a
service's (next) heartbeat, a request that is retried while a just-started service's
subscription propagates, and the peak of this process's memory while a block runs."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import psutil
import redis.asyncio as aioredis

from libs.protocol import Bus, Endpoint, Message
from libs.protocol.errors import NoRespondersError

Req = TypeVar("Req", bound=Message)
Rep = TypeVar("Rep", bound=Message)


async def until(
    pred: Callable[[], bool | Awaitable[bool]], what: str, timeout: float = 10.0
) -> None:
    """Wait until ``pred()`` (a plain or an async predicate) holds; fails naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        held = pred()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def next_heartbeat(
    redis: aioredis.Redis, key: str, before: object, what: str, timeout: float = 60.0
) -> object:
    """The heartbeat at ``key`` (`Keys.alive`), once there is one other than ``before``: a
    service that came up (``before`` None) or came up again."""
    deadline = time.monotonic() + timeout
    while True:
        beat = await redis.get(key)
        if beat is not None and beat != before:
            return beat
        assert time.monotonic() < deadline, f"{what} did not come up"
        await asyncio.sleep(0.05)


async def request_when_up(
    bus: Bus, endpoint: Endpoint[Req, Rep], msg: Req, *, timeout: float, **params: str
) -> Rep:
    """A request to a service under test. nats-server 2.15 sometimes reports "no responders" for a
    subscription made (and flushed) a moment ago on another connection, so the first request
    after a start may need a second try: retried for 5 s."""
    deadline = time.monotonic() + 5
    while True:
        try:
            return await bus.request(endpoint, msg, timeout=timeout, **params)
        except NoRespondersError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.02)


@contextmanager
def peak_rss() -> Iterator[list[int]]:
    """[growth]: how far this process's RSS (a service in it and the test's client both) rose
    above its level at the start, at most; sampled every 5 ms."""
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], proc.memory_info().rss)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out = [0]
    try:
        yield out
    finally:
        done.set()
        thread.join()
        out[0] = peak[0] - base
