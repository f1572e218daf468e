"""Which models the autoscaler's snapshot needs, kept incrementally (exact, not a heuristic).

`autoscaler.plan` does nothing with a model whose live instances equal its desired count (no
start, no surplus to expire or preempt), so those are left out. A model with no demand and
idle instances (desired 0) matters only when its first keep-alive deadline has come, for
`Plan.wake_at` (the earliest deadline to come), and as a preemption victim: it is in the
snapshot when its deadline is due, the one with the earliest deadline to come is too, and
when a plan finds starved models (preemption may pick any idle instance) the step plans again
with every model. Everything else (desired above live, or a surplus while it has demand) is
always in. `tests/unit/simulator/test_exact.py` checks that this changes no decision.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

Classify = Callable[[str], "tuple[str, float]"]


class AutoscaleView:
    """``classify(model)`` says ("gone" | "inert" | "hot" | "quiet", deadline): "quiet" with
    its first keep-alive deadline (``inf`` while none of its instances is ready)."""

    def __init__(self, classify: Classify) -> None:
        self.classify = classify
        self.dirty: set[str] = set()
        self.hot: set[str] = set()
        self.quiet: dict[str, int] = {}  # model -> version of its heap entry
        self._heap: list[tuple[float, str, int]] = []
        self._version = 0

    def touch(self, model: str) -> None:
        self.dirty.add(model)

    def _refresh(self) -> None:
        for m in self.dirty:
            kind, deadline = self.classify(m)
            self.hot.discard(m)
            self.quiet.pop(m, None)
            if kind == "hot":
                self.hot.add(m)
            elif kind == "quiet":
                self._version += 1
                self.quiet[m] = self._version
                heapq.heappush(self._heap, (deadline, m, self._version))
        self.dirty.clear()

    def needed(self, now: float) -> list[str]:
        """The models a step's snapshot must hold (sorted)."""
        self._refresh()
        out = set(self.hot)
        heap = self._heap
        while heap:
            deadline, m, v = heap[0]
            if self.quiet.get(m) != v:
                heapq.heappop(heap)
                continue
            out.add(m)
            if deadline > now:
                break  # the earliest deadline to come
            heapq.heappop(heap)
            self.dirty.add(m)  # looked at again after this step
        return sorted(out)

    def every(self) -> list[str]:
        """Every model with a start or a surplus (for a plan that may preempt)."""
        self._refresh()
        return sorted(self.hot | set(self.quiet))
