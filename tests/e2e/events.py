"""Every monitoring event of an e2e cluster, as any NATS subscriber sees them (plain JSON)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from libs.protocol import Bus

Event = dict[str, Any]


class Events:
    """The cluster's events from `start` on, with waits that always time out."""

    def __init__(self) -> None:
        self.items: list[Event] = []

    async def start(self, bus: Bus) -> Events:
        async def on_msg(msg: Any) -> None:
            self.items.append(json.loads(msg.data))

        await bus.nc.subscribe(bus.subjects.all_events, cb=on_msg)
        await bus.nc.flush()
        return self

    def of(self, kind: str, **match: Any) -> list[Event]:
        """The events of ``kind`` whose fields equal ``match``, in arrival order."""
        return [
            e
            for e in self.items
            if e["kind"] == kind and all(e.get(k) == v for k, v in match.items())
        ]

    async def wait_for(self, pred: Callable[[Event], bool], timeout: float = 120.0) -> Event:
        """The first event matching ``pred``, waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.items:
                if pred(e):
                    return e
            await asyncio.sleep(0.02)
        raise AssertionError(f"event did not arrive; kinds seen: {[e['kind'] for e in self.items]}")

    async def wait(self, kind: str, count: int = 1, timeout: float = 120.0, **match: Any) -> Any:
        """At least ``count`` events of ``kind`` matching ``match``; returns all of them."""
        deadline = time.monotonic() + timeout
        while len(self.of(kind, **match)) < count:
            assert time.monotonic() < deadline, f"no {count}x {kind} {match}"
            await asyncio.sleep(0.05)
        return self.of(kind, **match)

    async def until(self, pred: Callable[[], bool], what: str, timeout: float = 180.0) -> None:
        """Wait until ``pred()`` holds."""
        deadline = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.05)
