"""The router's demand report: requests held per model, and those waiting for an instance."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from services.router.demand import DemandTracker

pytestmark = pytest.mark.unit


class _Bus:
    """Only what the tracker touches when it does not publish."""

    def spawn(self, coro: Any) -> None:
        coro.close()


async def test_report_counts_requests_and_the_oldest_wait() -> None:
    waiting: dict[str, tuple[int, float]] = {}
    tracker = DemandTracker(_Bus(), "r1", refresh_s=2.0, waiting=lambda: waiting)  # type: ignore[arg-type]
    tracker.begin("a")
    tracker.begin("a")
    tracker.begin("b")
    waiting["a"] = (1, time.monotonic() - 3.0)
    report = tracker.report()
    assert report.router_id == "r1"
    assert report.ttl_s == 6.0
    assert report.models["a"].requests == 2
    assert report.models["a"].queued == 1
    assert 3.0 <= report.models["a"].oldest_wait_s < 4.0
    assert (report.models["b"].requests, report.models["b"].queued) == (1, 0)
    tracker.end("a")
    tracker.end("a")
    tracker.end("b")
    waiting.clear()
    assert tracker.report().models == {}


async def test_changes_are_coalesced_into_one_publication() -> None:
    published = asyncio.Event()
    count: list[int] = []

    class Bus(_Bus):
        def spawn(self, coro: Any) -> None:
            count.append(1)
            published.set()
            coro.close()

    tracker = DemandTracker(Bus(), "r1", refresh_s=2.0, coalesce_s=0.01)  # type: ignore[arg-type]
    for _ in range(5):
        tracker.begin("a")
    await asyncio.wait_for(published.wait(), 5)
    assert count == [1]
