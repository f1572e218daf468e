"""The router's demand signal for the autoscaler: per model, the requests this router holds
(from arrival to the end of the stream) and those waiting for an instance.

The hot path only updates a counter; a change schedules one publication of the whole report
after at most ``coalesce_s``, and a slow periodic refresh tells the scheduler this router is
still there (it forgets a report ``ttl`` after receipt).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

from libs.protocol import Bus
from libs.protocol.errors import BusError
from libs.protocol.messages import DemandReport, ModelDemand

log = logging.getLogger(__name__)

# model -> (requests waiting for an instance, monotonic time the oldest of them arrived)
Waiting = Callable[[], Mapping[str, tuple[int, float]]]
COALESCE_S = 0.05
TTL_REFRESHES = 3  # a report lapses after this many missed refreshes


class DemandTracker:
    def __init__(
        self,
        bus: Bus,
        router_id: str,
        *,
        refresh_s: float,
        waiting: Waiting = dict,
        coalesce_s: float = COALESCE_S,
    ) -> None:
        self.bus = bus
        self.router_id = router_id
        self.refresh_s = refresh_s
        self.waiting = waiting
        self.coalesce_s = coalesce_s
        self.requests: dict[str, int] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._last = 0.0
        self._closed = False

    def begin(self, model: str) -> None:
        self.requests[model] = self.requests.get(model, 0) + 1
        self.changed()

    def end(self, model: str) -> None:
        left = self.requests.get(model, 0) - 1
        if left > 0:
            self.requests[model] = left
        else:
            self.requests.pop(model, None)
        self.changed()

    def changed(self) -> None:
        """Publish soon (at most one report per ``coalesce_s``)."""
        if self._timer is not None or self._closed:
            return
        delay = max(0.0, self._last + self.coalesce_s - time.monotonic())
        self._timer = asyncio.get_running_loop().call_later(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._last = time.monotonic()
        self.bus.spawn(self.publish())

    def report(self) -> DemandReport:
        now = time.monotonic()
        waiting = self.waiting()
        models = {}
        for model in self.requests.keys() | waiting.keys():
            queued, since = waiting.get(model, (0, now))
            models[model] = ModelDemand(
                requests=max(self.requests.get(model, 0), queued),
                queued=queued,
                oldest_wait_s=max(now - since, 0.0) if queued else 0.0,
            )
        return DemandReport(
            router_id=self.router_id, models=models, ttl_s=self.refresh_s * TTL_REFRESHES
        )

    async def publish(self, report: DemandReport | None = None) -> None:
        try:
            await self.bus.publish(self.bus.subjects.demand, report or self.report())
        except BusError as exc:
            log.debug("demand report not published: %s", exc)

    async def run(self) -> None:
        """The periodic refresh."""
        while not self._closed:
            await self.publish()
            await asyncio.sleep(self.refresh_s)

    async def close(self) -> None:
        """Withdraw this router's demand (it is going away)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        empty = DemandReport(router_id=self.router_id, ttl_s=self.refresh_s * TTL_REFRESHES)
        await self.publish(empty)
