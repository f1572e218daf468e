"""The policies' inputs, built from the simulated cluster the way the scheduler builds them
from Redis (`Placer.snapshot`, `coldpolicy.weigh`'s running replies).

At 8,000 workers the scheduler's rank over every worker per cold start would dominate a
simulation, so by default a placement sees only *candidate* nodes, whole (every worker of a
node, so that `rank`'s tie-break on free workers per node is unchanged): the nodes holding the
model in DRAM, in SSD, and nowhere, each group's node with the most free workers (lowest id
first) and its lowest-id node with a free worker; for the cold-start migration policy also the
busy nodes holding the model in a faster tier than the best free node. Simulated nodes are
identical and share one calibration, so every node of a group gets the same estimate: the
candidates contain the full rank's first worker, the lowest-id worker among the best estimates
(`migration_policy.options` breaks ties by id) and every busy worker that could beat them.
The locality-blind `round_robin` gets the one worker its rotation lands on
(`round_robin_window`). ``exact=True`` passes every worker instead;
`tests/unit/simulator/test_exact.py` checks both give the same simulation.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from services.scheduler.calibration import LoadSample, fixed_seconds
from services.scheduler.placement import NodeView, WorkerView

from .cluster import Node
from .systems import System

# As `SLLM_CALIBRATION_WINDOW`'s default: recent loads per tier that calibrate estimates.
CALIBRATION_WINDOW = 16


@dataclass(frozen=True)
class Candidates:
    """What a placement of one model sees: nodes whose workers it ranks (``free``), those and
    the nodes whose busy workers could start it sooner (``contenders``), and every node whose
    view it gets (``known``: those, and a node holding the model, for its size)."""

    free: list[Node]
    contenders: list[Node]
    known: list[Node]


class Calibration:
    """Load samples per source tier, as `LoadFeedback` records them (the simulated nodes are
    identical, so one cluster-wide window stands for every node's own)."""

    def __init__(self, window: int = CALIBRATION_WINDOW) -> None:
        self.window = window
        self.samples: dict[str, deque[LoadSample]] = {}
        self.version = 0
        self._loads: dict[str, list[LoadSample]] = {}
        self.fixed_s = 0.0

    def record(self, tier: str, sample: LoadSample) -> None:
        if self.window <= 0:
            return
        q = self.samples.setdefault(tier, deque(maxlen=self.window))
        q.appendleft(sample)  # newest first, as the scheduler keeps them
        self._loads = {t: list(s) for t, s in self.samples.items()}
        self.fixed_s = fixed_seconds(s for ss in self.samples.values() for s in ss)
        self.version += 1

    @property
    def loads(self) -> dict[str, list[LoadSample]]:
        return self._loads


class Views:
    """Builds `NodeView`s (cached per node until its tiers or the calibration change) and the
    worker lists a placement decides on."""

    def __init__(self, nodes: Sequence[Node], system: System, *, exact: bool = False) -> None:
        self.nodes = nodes
        self.system = system
        self.exact = exact
        self.calibration = Calibration()
        self._cache: dict[int, tuple[tuple[int, int], float, NodeView]] = {}
        # model -> indices of nodes whose catalogs hold it (complete or being written).
        self.holders: dict[str, set[int]] = {}

    def node_view(self, node: Node, now: float) -> NodeView:
        key = (node.version, self.calibration.version)
        hit = self._cache.get(node.index)
        if hit is not None and hit[0] == key and now < hit[1]:
            return hit[2]
        pending = [t for t in node.ready_at.values() if t > now]
        valid_until = min(pending, default=float("inf"))
        dram = {m: e.bytes for m, e in (node.dram.entries if node.dram else {}).items()}
        ssd = {m: e.bytes for m, e in (node.ssd.entries if node.ssd else {}).items()}
        if pending:
            dram = {m: b for m, b in dram.items() if node.holds("dram", m, now)}
            ssd = {m: b for m, b in ssd.items() if node.holds("ssd", m, now)}
        hw = node.hw
        if self.system.calibrated:
            view = NodeView(
                node.node_id,
                dram=dram,
                ssd=ssd,
                # What the storage service measures: its fetches, promotions and reads.
                bandwidth={"dram": hw.dram_bw, "ssd": hw.ssd_bw, "registry": hw.registry_bw},
                loads=self.calibration.loads,
                fixed_s=self.calibration.fixed_s,
            )
        else:
            view = NodeView(node.node_id, dram=dram, ssd=ssd)
        self._cache[node.index] = (key, valid_until, view)
        return view

    # --- worker lists ---------------------------------------------------------------------

    def tier_group(self, node: Node, model: str, now: float) -> int:
        """0: the node's view holds ``model`` in DRAM, 1: in SSD, 2: nowhere."""
        return 0 if node.holds("dram", model, now) else 1 if node.holds("ssd", model, now) else 2

    def candidates(self, model: str, now: float) -> Candidates:
        """The nodes a placement of ``model`` looks at (see the module's docstring)."""
        if self.exact:
            every = list(self.nodes)
            return Candidates(every, every, every)
        holders = self.holders.get(model, set())
        groups: dict[int, list[Node]] = {0: [], 1: []}
        for i in sorted(holders):
            node = self.nodes[i]
            g = self.tier_group(node, model, now)
            if g < 2:
                groups[g].append(node)
        in_tier = {n.index for g in groups.values() for n in g}
        picked: set[int] = set()
        best_group = 3
        for g, nodes in (
            (0, groups[0]),
            (1, groups[1]),
            (2, (n for n in self.nodes if n.index not in in_tier)),
        ):
            most: Node | None = None
            lowest: Node | None = None
            for node in nodes:
                free = node.free_workers
                if free == 0:
                    continue
                if lowest is None:
                    lowest = node
                if most is None or free > most.free_workers:
                    most = node
            if most is not None and lowest is not None:
                picked |= {most.index, lowest.index}
                best_group = min(best_group, g)
        # Busy workers can beat the best free one only from a faster tier.
        busy = {n.index for g, nodes in groups.items() if g < best_group for n in nodes}
        # One node whose view holds the model tells `checkpoint_bytes` its size (every copy
        # has the same): the other holders' views change nothing.
        sized = {g[0].index for g in groups.values() if g}
        return Candidates(
            [self.nodes[i] for i in sorted(picked)],
            [self.nodes[i] for i in sorted(picked | busy)],
            [self.nodes[i] for i in sorted(picked | busy | sized)],
        )

    def round_robin_window(self, turn: int) -> tuple[list[WorkerView], int]:
        """`round_robin` over every free worker starts at the one ``turn`` modulo their
        number places along (by id); this returns that worker alone, with turn 0, so that
        the policy's estimate is computed for it only (the other estimates are never used).
        ``([], 0)`` when no worker is free."""
        total = sum(n.free_workers for n in self.nodes)
        if total == 0:
            return [], 0
        k = turn % total
        for node in self.nodes:  # ids sort by node, then by GPU
            if k < node.free_workers:
                w = [w for w in node.workers if w.free][k]
                return [WorkerView(w.worker_id, w.node_id, True)], 0
            k -= node.free_workers
        raise AssertionError("free worker counts out of date")

    def workers(self, nodes: Iterable[Node]) -> list[WorkerView]:
        return [WorkerView(w.worker_id, w.node_id, w.free) for n in nodes for w in n.workers]

    def views(self, nodes: Iterable[Node], now: float) -> list[NodeView]:
        return [self.node_view(n, now) for n in nodes]
