"""Per-model locks (concurrent ensures of one model coalesce) and cancellable blocking calls."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TypeVar

from libs.protocol.errors import UnavailableError

T = TypeVar("T")


class KeyedLocks:
    """One asyncio lock per key, created on demand and dropped when nobody holds or waits."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def busy(self) -> set[str]:
        """Keys held or waited for right now (their tier copies must not be evicted)."""
        return set(self._locks)


async def run_blocking(
    executor: Executor, fn: Callable[[threading.Event], T], *, grace: float = 30.0
) -> T:
    """Run ``fn(cancel)`` in ``executor``. If the caller is cancelled, set ``cancel`` and wait
    (up to ``grace`` seconds) for ``fn`` to notice and clean up before re-raising, so that no
    thread keeps writing into a tier after its request is gone."""
    cancel = threading.Event()
    fut = asyncio.get_running_loop().run_in_executor(executor, fn, cancel)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        cancel.set()
        await asyncio.wait({fut}, timeout=grace)
        if fut.done() and not fut.cancelled():
            fut.exception()  # retrieved: the caller is gone, nobody else will look at it
        raise


class BlockingPool:
    """The service's I/O threads; closing it refuses new work (the service is stopping)."""

    def __init__(self, threads: int, name: str) -> None:
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix=name)
        self._closed = False

    async def run(self, fn: Callable[[threading.Event], T]) -> T:
        """``fn(cancel)`` in a thread; see `run_blocking`."""
        if self._closed:
            raise UnavailableError("the storage service is stopping")
        return await run_blocking(self._executor, fn)

    def close(self) -> None:
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)
