"""The cluster snapshot placements decide on, read from the store at most so often.

A snapshot reads every worker and every node's tiers and calibration: at 1,000 workers that
is tens of milliseconds of the scheduler's CPU, too much to pay for each placement. So one
snapshot serves the placements of a short while, and stays true enough for them:

* the workers this scheduler reserves or frees are marked so in it at once (`taken`, `freed`);
* a reservation is atomic in the store, so a worker that another scheduler took, or that is
  no longer free, fails it and the next best worker is tried; when none is left in the
  snapshot, the placement asks for a fresh one (`fresh`) before it says "no free worker";
* a snapshot younger than `HINT_SPACING` times its read took is used as it is: the reads
  take at most about 1/`HINT_SPACING` of the scheduler's time, however many placements;
* past that, news (an instance stopped, a load reported, a copy made or evicted: events,
  hints only) marks the snapshot stale, and the next placement reads a new one;
* without news, a snapshot is read again after ``max_age_s`` anyway (the reliable path: a
  worker freed by its own unload, a node's new copy, without an event that arrived).

In a small cluster a read takes a millisecond or two, so a snapshot lasts some 10-20 ms at
most: placements see every change as good as at once. ``max_age_s`` 0 reads one for every
placement.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

from .placement import NodeFits, NodeView, WorkerView

# A snapshot is used as it is for this many times its read took.
HINT_SPACING = 10.0


@dataclass(frozen=True)
class Cluster:
    """The snapshot a placement decides on: every worker (free: alive and holding nothing),
    every node's tiers and calibration, and the nodes' calibrated tiers (`node_fits`)."""

    workers: Sequence[WorkerView]
    nodes: Sequence[NodeView]
    alive: frozenset[str]  # the workers whose heartbeat is current
    fits: NodeFits = field(default_factory=dict)

    @property
    def free_workers(self) -> int:
        return sum(1 for w in self.workers if w.free)

    def with_worker(self, worker_id: str, *, free: bool) -> Cluster:
        """This snapshot with ``worker_id`` free or taken (unchanged if it is not in it)."""
        workers = list(self.workers)
        for k, w in enumerate(workers):
            if w.worker_id == worker_id:
                if w.free == free or (free and worker_id not in self.alive):
                    return self
                workers[k] = replace(w, free=free)
                return replace(self, workers=workers)
        return self


class Snapshots:
    """One cached `Cluster`, re-read when too old or, hinted, when stale (module docstring)."""

    def __init__(
        self,
        read: Callable[[], Awaitable[Cluster]],
        *,
        max_age_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self.max_age_s = max_age_s
        self.clock = clock
        self._cluster: Cluster | None = None
        self._read_at = 0.0  # when the cached snapshot's read began
        self._read_s = 0.0  # how long it took
        self._stale = False
        self._reading: asyncio.Future[Cluster] | None = None
        self.reads = 0  # snapshots read so far (for the scale benchmark's figures)

    async def get(self) -> Cluster:
        """The cached snapshot, or a new one when it is too old, or stale and not too new."""
        if self._cluster is not None and self.max_age_s > 0:
            age = self.clock() - self._read_at
            if age < min(HINT_SPACING * self._read_s, self.max_age_s):
                return self._cluster
            if age < self.max_age_s and not self._stale:
                return self._cluster
        return await self.fresh()

    async def fresh(self) -> Cluster:
        """A snapshot read now (concurrent callers share one read)."""
        if self._reading is None:
            self._reading = asyncio.ensure_future(self._read_now())
            self._reading.add_done_callback(self._read_done)
        return await asyncio.shield(self._reading)

    async def _read_now(self) -> Cluster:
        began = self.clock()
        self._stale = False  # news from here on is not in this read
        cluster = await self._read()
        self._cluster, self._read_at, self._read_s = cluster, began, self.clock() - began
        self.reads += 1
        return cluster

    def _read_done(self, fut: asyncio.Future[Cluster]) -> None:
        self._reading = None
        if not fut.cancelled():
            fut.exception()  # a failed read is the caller's to see, not the loop's to log

    def stale(self) -> None:
        """News: the next placement reads a new snapshot (`HINT_SPACING` allowing)."""
        self._stale = True

    def taken(self, worker_id: str) -> None:
        """This scheduler reserved ``worker_id`` (or found it taken)."""
        if self._cluster is not None:
            self._cluster = self._cluster.with_worker(worker_id, free=False)

    def freed(self, worker_id: str) -> None:
        """This scheduler freed ``worker_id``."""
        if self._cluster is not None:
            self._cluster = self._cluster.with_worker(worker_id, free=True)
