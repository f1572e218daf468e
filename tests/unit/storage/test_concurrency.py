"""Per-model locks and cancellable blocking calls."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from services.storage.concurrency import KeyedLocks, run_blocking

pytestmark = pytest.mark.unit


async def test_same_key_serialises_other_keys_run_alongside() -> None:
    locks = KeyedLocks()
    order: list[str] = []

    async def job(key: str, tag: str) -> None:
        async with locks.hold(key):
            order.append(f"{tag}+")
            await asyncio.sleep(0.05)
            order.append(f"{tag}-")

    await asyncio.gather(job("m", "a"), job("m", "b"), job("n", "c"))
    assert order.index("a-") < order.index("b+")
    assert order.index("c+") < order.index("a-")
    assert locks.busy() == set()


async def test_busy_lists_held_and_awaited_keys() -> None:
    locks = KeyedLocks()
    entered = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with locks.hold("m"):
            entered.set()
            await release.wait()

    task = asyncio.create_task(holder())
    await entered.wait()
    assert locks.busy() == {"m"}
    release.set()
    await task
    assert locks.busy() == set()


async def test_cancelling_the_caller_cancels_the_thread_and_waits_for_it() -> None:
    finished = threading.Event()

    def work(cancel: threading.Event) -> None:
        deadline = time.monotonic() + 10
        while not cancel.is_set() and time.monotonic() < deadline:
            time.sleep(0.005)
        finished.set()

    with ThreadPoolExecutor(1) as pool:
        task = asyncio.create_task(run_blocking(pool, work))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert finished.is_set()  # the thread noticed before the caller's cancel completed
