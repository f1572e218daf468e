"""What the scheduler knows of demand (routers' reports) and of instance activity (workers'
idle news and refused unloads). Plain bookkeeping, no I/O; times are passed in."""

from __future__ import annotations

import math
from dataclasses import dataclass

from libs.protocol.messages import DemandReport


@dataclass(frozen=True)
class Demand:
    requests: int = 0
    queued: int = 0
    waiting_since: float | None = None  # when the oldest waiting request arrived


class DemandBook:
    """The latest report of each router; a report lapses ``ttl_s`` after it arrived."""

    def __init__(self) -> None:
        self._reports: dict[str, tuple[float, DemandReport]] = {}
        # `totals` as of the reports now held (None: to be summed again). A scaling step asks
        # for every model's: summing all reports each time was quadratic in the models.
        self._totals: dict[str, Demand] | None = None

    def apply(self, report: DemandReport, now: float) -> set[str]:
        """Take a router's report; returns the models whose totals changed."""
        before = self.totals()
        self._totals = None
        if report.models:
            self._reports[report.router_id] = (now, report)
        else:
            self._reports.pop(report.router_id, None)
        return _changed(before, self.totals())

    def expire(self, now: float) -> set[str]:
        """Forget lapsed reports (a router that died); returns the models that changed."""
        lapsed = [r for r, (at, rep) in self._reports.items() if at + rep.ttl_s <= now]
        if not lapsed:
            return set()
        before = self.totals()
        self._totals = None
        for r in lapsed:
            del self._reports[r]
        return _changed(before, self.totals())

    def next_expiry(self) -> float | None:
        return min((at + rep.ttl_s for at, rep in self._reports.values()), default=None)

    def totals(self) -> dict[str, Demand]:
        """Per model: the sum over routers; ``waiting_since`` is the oldest router's."""
        if self._totals is not None:
            return self._totals
        out: dict[str, Demand] = {}
        for at, rep in self._reports.values():
            for model, d in rep.models.items():
                cur = out.get(model, Demand())
                since = cur.waiting_since
                if d.queued:
                    mine = at - d.oldest_wait_s
                    since = mine if since is None else min(since, mine)
                out[model] = Demand(cur.requests + d.requests, cur.queued + d.queued, since)
        self._totals = out
        return out

    def get(self, model: str) -> Demand:
        return self.totals().get(model, Demand())


def _changed(a: dict[str, Demand], b: dict[str, Demand]) -> set[str]:
    return {m for m in a.keys() | b.keys() if a.get(m) != b.get(m)}


@dataclass(frozen=True)
class Activity:
    """An instance as its worker last described it. ``requests`` (requests taken so far)
    orders the news: a reply or event with fewer requests than we know of is stale."""

    requests: int
    busy: bool
    idle_since: float = 0.0
    keep_until: float = 0.0  # math.inf: kept indefinitely
    retry_at: float = 0.0  # a refused stop may be asked again from then


class ActivityBook:
    def __init__(self) -> None:
        self._by_instance: dict[str, Activity] = {}

    def get(self, instance_id: str) -> Activity | None:
        return self._by_instance.get(instance_id)

    def idle(self, instance_id: str, *, requests: int, at: float, keep_until: float | None) -> bool:
        """The instance's last request finished at ``at``; False if the news is stale."""
        cur = self._by_instance.get(instance_id)
        if cur is not None and requests < cur.requests:
            return False
        until = math.inf if keep_until is None else keep_until
        self._by_instance[instance_id] = Activity(requests, False, at, until)
        return True

    def refused(
        self,
        instance_id: str,
        *,
        requests: int,
        in_flight: int,
        retry_after_s: float | None,
        now: float,
    ) -> None:
        """The worker refused to stop the instance: busy, or its keep-alive lasts."""
        cur = self._by_instance.get(instance_id)
        if in_flight > 0:
            # Busy at ``requests``; an idle event with as many requests is newer news.
            if cur is None or requests > cur.requests:
                self._by_instance[instance_id] = Activity(requests, True, now, math.inf)
            return
        if cur is not None and requests < cur.requests:
            return
        retry_at = now + retry_after_s if retry_after_s is not None else math.inf
        idle_since = cur.idle_since if cur is not None and not cur.busy else now
        keep = cur.keep_until if cur is not None and not cur.busy else retry_at
        self._by_instance[instance_id] = Activity(requests, False, idle_since, keep, retry_at)

    def forget(self, instance_id: str) -> None:
        self._by_instance.pop(instance_id, None)

    def keep_only(self, instance_ids: set[str]) -> None:
        for iid in [i for i in self._by_instance if i not in instance_ids]:
            del self._by_instance[iid]
