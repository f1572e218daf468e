"""The discrete-event loop: callbacks ordered by (time, insertion order), so that a run is
deterministic whatever the callbacks do."""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(order=True)
class Event:
    at: float
    seq: int
    fn: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class EventLoop:
    """Simulated time: `at` and `after` schedule callbacks, `run` fires them in order."""

    def __init__(self) -> None:
        self.now = 0.0
        self._queue: list[Event] = []
        self._seq = 0
        self.fired = 0
        self._stopped = False

    def stop(self) -> None:
        """End `run` after the current event."""
        self._stopped = True

    def at(self, t: float, fn: Callable[[], None]) -> Event:
        """Run ``fn`` at time ``t`` (never in the past: ``t`` before now means now)."""
        self._seq += 1
        ev = Event(max(t, self.now), self._seq, fn)
        heapq.heappush(self._queue, ev)
        return ev

    def after(self, delay: float, fn: Callable[[], None]) -> Event:
        return self.at(self.now + max(delay, 0.0), fn)

    def run(self, until: float | None = None) -> None:
        """Fire events in order until none is left (or the next is after ``until``)."""
        q = self._queue
        self._stopped = False
        while q and not self._stopped:
            if until is not None and q[0].at > until:
                self.now = until
                return
            ev = heapq.heappop(q)
            if ev.cancelled:
                continue
            self.now = ev.at
            self.fired += 1
            ev.fn()

    def __len__(self) -> int:
        return sum(not e.cancelled for e in self._queue)
