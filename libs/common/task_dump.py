"""Where a stuck service waits: on SIGUSR1 (``kill -USR1 <pid>``), every asyncio task of the
service is logged with its whole await chain (coroutine by coroutine, down to the future it
waits on). A thread's stack shows only the event loop idling; this shows what each task is
waiting for. The e2e harness sends it to a failed test's services (tests/conftest.py)."""

from __future__ import annotations

import asyncio
import logging
import signal
from types import CoroutineType, GeneratorType
from typing import Any

log = logging.getLogger(__name__)


def await_chain(task: asyncio.Task[Any]) -> list[str]:
    """``file:line in function`` of each coroutine ``task`` is suspended in, outermost first,
    then what the innermost one awaits (a future, a sleep)."""
    out: list[str] = []
    awaited: Any = task.get_coro()
    for _ in range(256):  # a chain is never this deep; a cycle would be a bug of ours
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is None:
            break
        code = frame.f_code
        out.append(f"{code.co_filename}:{frame.f_lineno} in {code.co_name}")
        nxt = getattr(awaited, "cr_await", None)
        if nxt is None:
            nxt = getattr(awaited, "gi_yieldfrom", None)
        if not isinstance(nxt, CoroutineType | GeneratorType):
            if nxt is not None:
                out.append(f"awaits {nxt!r}"[:300])
            break
        awaited = nxt
    return out


def log_tasks() -> None:
    """Log every task of the running loop with its await chain (see the module docstring)."""
    tasks = asyncio.all_tasks()
    log.warning("%d asyncio tasks (SIGUSR1):", len(tasks))
    for task in sorted(tasks, key=lambda t: t.get_name()):
        chain = "\n    ".join(await_chain(task)) or "(running)"
        log.warning("task %s:\n    %s", task.get_name(), chain)


def install(loop: asyncio.AbstractEventLoop) -> None:
    """Log the tasks on SIGUSR1 (where the platform has it)."""
    sig = getattr(signal, "SIGUSR1", None)
    if sig is not None:
        loop.add_signal_handler(sig, log_tasks)
