"""A tier's in-memory catalog and its LRU eviction policy (pure: no I/O, no clocks)."""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

TierName = Literal["ssd", "dram"]
Refusal = Literal["too_large", "pinned"]


@dataclass(frozen=True)
class TierEntry:
    """One checkpoint held by a tier. ``last_used`` is a logical clock tick (larger: newer)."""

    model: str
    path: Path
    bytes: int
    uri: str
    last_used: int = 0


def plan_eviction(
    entries: Mapping[str, TierEntry],
    *,
    capacity: int | None,
    reserved: int,
    need: int,
    pinned: Collection[str] = (),
) -> list[str] | None:
    """The least-recently-used models to evict so that ``need`` more bytes fit.

    ``capacity`` None means unlimited; ``reserved`` counts bytes promised to copies in progress;
    ``pinned`` models are never chosen. Returns ``[]`` when it already fits and None when it
    cannot fit even after evicting everything evictable (nothing should then be evicted).
    """
    if capacity is None:
        return []
    if need > capacity:
        return None
    used = sum(e.bytes for e in entries.values()) + reserved
    if used + need <= capacity:
        return []
    victims: list[str] = []
    for e in sorted(entries.values(), key=lambda e: (e.last_used, e.model)):
        if e.model in pinned:
            continue
        victims.append(e.model)
        used -= e.bytes
        if used + need <= capacity:
            return victims
    return None


def refusal_reason(capacity: int | None, need: int) -> Refusal:
    """Why `plan_eviction` found no plan: the copy is larger than the whole tier, or the room
    is held by pinned copies (in use, or being written) and copies in progress."""
    if capacity is not None and need > capacity:
        return "too_large"
    return "pinned"


@dataclass
class TierCatalog:
    """What one tier holds, with capacity accounting (entries plus reservations)."""

    name: TierName
    root: Path
    capacity: int | None
    entries: dict[str, TierEntry] = field(default_factory=dict)
    reserved: int = 0
    _clock: Iterator[int] = field(default_factory=lambda: itertools.count(1), repr=False)

    @property
    def used(self) -> int:
        return sum(e.bytes for e in self.entries.values()) + self.reserved

    def get(self, model: str) -> TierEntry | None:
        return self.entries.get(model)

    def add(self, entry: TierEntry) -> TierEntry:
        """Insert (or replace) ``entry`` as the most recently used."""
        entry = replace(entry, last_used=next(self._clock))
        self.entries[entry.model] = entry
        return entry

    def touch(self, model: str) -> None:
        e = self.entries.get(model)
        if e is not None:
            self.entries[model] = replace(e, last_used=next(self._clock))

    def pop(self, model: str) -> TierEntry | None:
        return self.entries.pop(model, None)

    def plan(self, need: int, pinned: Collection[str] = ()) -> list[str] | None:
        """See `plan_eviction`."""
        return plan_eviction(
            self.entries, capacity=self.capacity, reserved=self.reserved, need=need, pinned=pinned
        )

    def reserve(self, nbytes: int) -> None:
        self.reserved += nbytes

    def release(self, nbytes: int) -> None:
        self.reserved = max(0, self.reserved - nbytes)
