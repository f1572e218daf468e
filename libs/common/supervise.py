"""Supervision of a service's background tasks (not of processes: see ``libs/cli/supervise``).

A background loop that crashes is logged with its traceback and restarted after a backoff; a
loop that must not be restarted, or one that keeps crashing, takes the service down visibly
(``Supervisor.crashed`` is set and `run_service` exits non-zero) instead of dying unseen.
One-shot tasks are owned too, so that their failures are logged and a stop cancels them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 30.0


@dataclass(frozen=True)
class Restart:
    """How a crashed loop comes back: after ``backoff_min_s``, doubling up to ``backoff_max_s``
    while it keeps crashing (a loop that ran for ``backoff_max_s`` starts over from the minimum).
    More than ``max_crashes`` crashes within ``window_s`` make it fatal (None: never)."""

    backoff_min_s: float = BACKOFF_MIN_S
    backoff_max_s: float = BACKOFF_MAX_S
    max_crashes: int | None = None
    window_s: float = 60.0


# The default: restart forever, with backoff.
RESTART = Restart()
# The policy of a loop that must not run again after a crash: the service stops instead.
FATAL: Restart | None = None


def next_backoff(previous: float, ran_s: float, policy: Restart) -> float:
    """The wait before the next restart of a loop that crashed after running ``ran_s``."""
    if previous <= 0 or ran_s >= policy.backoff_max_s:
        return policy.backoff_min_s
    return min(previous * 2, policy.backoff_max_s)


class Supervisor:
    """The background tasks of one service: loops restarted on a crash, one-shot tasks whose
    failure is logged; `aclose` cancels them all and waits for them (bounded)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.crashed = asyncio.Event()  # a fatal crash: the service must stop
        self.error: BaseException | None = None
        self.restarts: dict[str, int] = {}  # per loop, for tests and logs
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def loop(
        self,
        name: str,
        factory: Callable[[], Awaitable[None]],
        *,
        restart: Restart | None = RESTART,
    ) -> asyncio.Task[None]:
        """Run ``factory()`` until it returns; restart it per ``restart`` when it raises
        (``FATAL``: never, the service stops)."""
        return self._own(self._supervise(name, factory, restart), name)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str = "") -> asyncio.Task[Any]:
        """Run a one-shot task: cancelled by `aclose`, its failure logged with its traceback."""
        task = self._own(coro, name or getattr(coro, "__qualname__", "task"))
        task.add_done_callback(self._log_failure)
        return task

    def _own(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        if self._closed:
            coro.close()
            raise RuntimeError(f"{self.name}: supervisor is closed, cannot start {name}")
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.name}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _log_failure(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: task %s failed", self.name, task.get_name(), exc_info=task.exception())

    async def _supervise(
        self, name: str, factory: Callable[[], Awaitable[None]], policy: Restart | None
    ) -> None:
        backoff = 0.0
        crashes: list[float] = []
        while True:
            started = time.monotonic()
            try:
                await factory()
                return  # a loop that ends on its own is done, not crashed
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                now = time.monotonic()
                crashes = [t for t in crashes if policy is None or now - t < policy.window_s]
                crashes.append(now)
                if policy is None or (
                    policy.max_crashes is not None and len(crashes) > policy.max_crashes
                ):
                    why = "must not be restarted" if policy is None else "keeps crashing"
                    log.critical(
                        "%s: background loop %s crashed and %s: stopping the service",
                        self.name,
                        name,
                        why,
                        exc_info=exc,
                    )
                    self.fail(exc)
                    return
                backoff = next_backoff(backoff, now - started, policy)
                self.restarts[name] = self.restarts.get(name, 0) + 1
                log.error(
                    "%s: background loop %s crashed; restarting in %.1fs",
                    self.name,
                    name,
                    backoff,
                    exc_info=exc,
                )
            await asyncio.sleep(backoff)

    def fail(self, exc: BaseException) -> None:
        """Mark the service as crashed (the first error is kept)."""
        if self.error is None:
            self.error = exc
        self.crashed.set()

    async def aclose(self, timeout: float = 5.0) -> None:
        """Cancel every task and wait for them (at most ``timeout``). Idempotent."""
        self._closed = True
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                log.warning("%s: task %s did not stop in %gs", self.name, task.get_name(), timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._tasks)
