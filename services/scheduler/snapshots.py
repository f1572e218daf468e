"""The cluster snapshot placements decide on, read from the store at most so often.

A snapshot reads every worker and every node's tiers and calibration: at 1,000 workers that
is tens of milliseconds of the scheduler's CPU, too much to pay inside each placement. So one
snapshot serves the placements of a short while, and stays true enough for them:

* the workers this scheduler reserves or frees are marked so in it at once (`taken`, `freed`);
* a reservation is atomic in the store, so a worker that another scheduler took, or that is
  no longer free, fails it and the next best worker is tried; when none is left in the
  snapshot, the placement asks for a fresh one (`fresh`) before it says "no free worker";
* a placement reads its own model's copies fresh (`Placer.with_fresh_locality`): the one fact
  of the snapshot that decides it most is never old;
* news (an instance stopped, a load reported, a copy made or evicted: events, hints only)
  marks the snapshot stale, and a snapshot older than ``max_age_s`` is due anyway (the
  reliable path, for a change no event told of): the next placement starts a new read in
  the background and decides on the one it has, which the read replaces when done. A hinted
  read follows the last no sooner than `HINT_SPACING` times that one took, so the reads take
  at most about 1/`HINT_SPACING` of the scheduler's time, however much news; an idle
  scheduler reads nothing. No placement waits for a read but the very first.

``max_age_s`` 0 reads one for every placement.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
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

    def with_locality(self, model: str, dram: Mapping[str, int], ssd: Mapping[str, int]) -> Cluster:
        """This snapshot with ``model``'s copies where ``dram`` and ``ssd`` (node -> bytes)
        say, as the store has them now (`ClusterState.holders`)."""
        nodes = list(self.nodes)
        changed = False
        for k, node in enumerate(nodes):
            want = (dram.get(node.node_id), ssd.get(node.node_id))
            if (node.dram.get(model), node.ssd.get(model)) == want:
                continue
            tiers = []
            for have, nbytes in zip((node.dram, node.ssd), want, strict=True):
                tier = {m: b for m, b in have.items() if m != model}
                if nbytes is not None:
                    tier[model] = nbytes
                tiers.append(tier)
            nodes[k] = replace(node, dram=tiers[0], ssd=tiers[1])
            changed = True
        return replace(self, nodes=nodes) if changed else self


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
        self._marks_during_read: list[tuple[str, bool]] = []  # (worker, free) since it began
        self.reads = 0  # snapshots read so far (for the scale benchmark's figures)

    async def get(self) -> Cluster:
        """The cached snapshot; a new one is read in the background when news made it stale
        or it is older than ``max_age_s``. Only the first placement waits for a read."""
        if self._cluster is None or self.max_age_s <= 0:
            return await self.fresh()
        age = self.clock() - self._read_at
        due = age >= self.max_age_s or (self._stale and age >= HINT_SPACING * self._read_s)
        if due and self._reading is None:
            self._start_read()
        return self._cluster

    async def fresh(self) -> Cluster:
        """A snapshot read now (concurrent callers share one read)."""
        reading = self._reading or self._start_read()
        return await asyncio.shield(reading)

    def _start_read(self) -> asyncio.Future[Cluster]:
        self._stale = False  # news from here on may not be in this read
        self._marks_during_read = []
        self._reading = reading = asyncio.ensure_future(self._read_now())
        reading.add_done_callback(self._read_done)
        return reading

    async def _read_now(self) -> Cluster:
        began = self.clock()
        cluster = await self._read()
        # Reservations and frees of this scheduler during the read may be missing from it.
        for worker_id, free in self._marks_during_read:
            cluster = cluster.with_worker(worker_id, free=free)
        self._cluster, self._read_at, self._read_s = cluster, began, self.clock() - began
        self.reads += 1
        return cluster

    def _read_done(self, fut: asyncio.Future[Cluster]) -> None:
        self._reading = None
        if not fut.cancelled() and fut.exception() is not None:
            # A background read that failed leaves the snapshot stale: the next tries again.
            self._stale = True

    def stale(self) -> None:
        """News: the next placement reads a new snapshot (`HINT_SPACING` allowing)."""
        self._stale = True

    def taken(self, worker_id: str) -> None:
        """This scheduler reserved ``worker_id`` (or found it taken)."""
        self._mark(worker_id, free=False)

    def freed(self, worker_id: str) -> None:
        """This scheduler freed ``worker_id``."""
        self._mark(worker_id, free=True)

    def _mark(self, worker_id: str, *, free: bool) -> None:
        if self._cluster is not None:
            self._cluster = self._cluster.with_worker(worker_id, free=free)
        if self._reading is not None:
            self._marks_during_read.append((worker_id, free))
