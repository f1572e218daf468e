"""The supervisor of a service's background tasks: crashed loops restart with backoff, a fatal
crash marks the service as crashed, one-shot failures are logged, and closing cancels all."""

from __future__ import annotations

import asyncio
import logging

import pytest

from libs.common.supervise import FATAL, Restart, Supervisor, next_backoff

pytestmark = pytest.mark.unit

FAST = Restart(backoff_min_s=0.01, backoff_max_s=0.04)


def test_backoff_doubles_while_a_loop_keeps_crashing_and_starts_over_after_a_long_run() -> None:
    policy = Restart(backoff_min_s=0.1, backoff_max_s=1.0)
    waits = [0.0]
    for _ in range(6):
        waits.append(next_backoff(waits[-1], 0.0, policy))
    assert waits[1:] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert next_backoff(1.0, 5.0, policy) == 0.1  # it ran for a while: a fresh crash


async def test_a_loop_that_raises_is_logged_and_restarted(caplog: pytest.LogCaptureFixture) -> None:
    sup = Supervisor("svc")
    runs: list[int] = []
    third = asyncio.Event()

    async def loop() -> None:
        runs.append(len(runs))
        if len(runs) <= 2:
            raise RuntimeError(f"boom {len(runs)}")
        third.set()
        await asyncio.Event().wait()

    with caplog.at_level(logging.ERROR, logger="libs.common.supervise"):
        sup.loop("flaky", loop, restart=FAST)
        await asyncio.wait_for(third.wait(), 5)
    assert sup.restarts == {"flaky": 2}
    assert not sup.crashed.is_set()
    crashes = [r for r in caplog.records if "flaky crashed" in r.getMessage()]
    assert len(crashes) == 2
    assert all(r.exc_info is not None for r in crashes)  # the traceback is in the log
    assert "boom 1" in caplog.text
    await sup.aclose()


async def test_a_fatal_loop_that_raises_marks_the_service_crashed() -> None:
    sup = Supervisor("svc")
    runs = 0

    async def loop() -> None:
        nonlocal runs
        runs += 1
        raise ValueError("state lost")

    sup.loop("vital", loop, restart=FATAL)
    await asyncio.wait_for(sup.crashed.wait(), 5)
    await asyncio.sleep(0.05)
    assert runs == 1  # not restarted
    assert isinstance(sup.error, ValueError)
    await sup.aclose()


async def test_a_loop_that_keeps_crashing_becomes_fatal() -> None:
    sup = Supervisor("svc")
    runs = 0

    async def loop() -> None:
        nonlocal runs
        runs += 1
        raise OSError("always")

    sup.loop("looping", loop, restart=Restart(0.001, 0.002, max_crashes=3, window_s=60))
    await asyncio.wait_for(sup.crashed.wait(), 5)
    assert runs == 4  # three crashes tolerated, the fourth is fatal
    assert sup.restarts == {"looping": 3}
    await sup.aclose()


async def test_a_loop_that_returns_is_done_not_restarted() -> None:
    sup = Supervisor("svc")
    runs = 0

    async def loop() -> None:
        nonlocal runs
        runs += 1

    task = sup.loop("short", loop, restart=FAST)
    await asyncio.wait_for(task, 5)
    assert runs == 1
    assert len(sup) == 0
    assert not sup.crashed.is_set()


async def test_closing_cancels_every_loop_and_task_and_refuses_new_ones() -> None:
    sup = Supervisor("svc")
    cancelled: list[str] = []

    async def wait(name: str) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(name)
            raise

    sup.loop("a", lambda: wait("a"))
    sup.loop("b", lambda: wait("b"), restart=FATAL)
    sup.spawn(wait("c"), "c")
    await asyncio.sleep(0.01)
    assert len(sup) == 3
    await sup.aclose()
    assert sorted(cancelled) == ["a", "b", "c"]
    assert len(sup) == 0
    assert not sup.crashed.is_set()  # a cancellation is not a crash
    coro = wait("d")
    with pytest.raises(RuntimeError, match="closed"):
        sup.spawn(coro, "d")
    await sup.aclose()  # idempotent


async def test_a_one_shot_task_that_fails_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    sup = Supervisor("svc")

    async def once() -> None:
        raise KeyError("missing")

    with caplog.at_level(logging.ERROR, logger="libs.common.supervise"):
        task = sup.spawn(once(), "once")
        await asyncio.wait([task])
        await asyncio.sleep(0)
    (record,) = [r for r in caplog.records if "task svc:once failed" in r.getMessage()]
    assert record.exc_info is not None
    assert not sup.crashed.is_set()  # a one-shot task's failure is its own
    await sup.aclose()
