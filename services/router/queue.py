"""The cold-start queue: bounded per-model FIFOs of requests waiting for an instance (pure)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Generic, TypeVar

from libs.protocol.errors import OverloadedError

T = TypeVar("T")


class WaitQueue(Generic[T]):
    """Per model, the requests waiting for a ready instance, in arrival order.

    A new request is refused when its model's queue holds ``capacity`` requests. A request that
    was woken but had to wait again (its instance vanished, every instance was busy) rejoins
    with its original ticket: it keeps its place ahead of later arrivals and is never refused,
    since it was admitted once already.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._tickets = itertools.count()
        self._waiting: dict[str, dict[int, T]] = {}

    def join(self, model: str, item: T, *, ticket: int | None = None) -> int:
        """Queue ``item``; returns its ticket. Raises `OverloadedError` when the queue is full."""
        waiting = self._waiting.setdefault(model, {})
        if ticket is None:
            if len(waiting) >= self.capacity:
                raise OverloadedError(
                    f"too many requests are waiting for {model!r} to start "
                    f"({len(waiting)} queued, the limit is {self.capacity})",
                    detail={"model": model, "queued": len(waiting)},
                )
            ticket = next(self._tickets)
        waiting[ticket] = item
        return ticket

    def leave(self, model: str, ticket: int) -> bool:
        """Remove a request (it timed out or went away); False if it was not queued."""
        waiting = self._waiting.get(model)
        if waiting is None or waiting.pop(ticket, None) is None:
            return False
        if not waiting:
            del self._waiting[model]
        return True

    def take_all(self, model: str) -> list[T]:
        """Dequeue every request of ``model``, oldest ticket first."""
        waiting = self._waiting.pop(model, {})
        return [waiting[t] for t in sorted(waiting)]

    def peek(self, model: str) -> list[T]:
        """The requests waiting for ``model``, without dequeuing them."""
        return list(self._waiting.get(model, {}).values())

    def depth(self, model: str) -> int:
        return len(self._waiting.get(model, ()))

    def models(self) -> Iterator[str]:
        return iter(list(self._waiting))

    def __len__(self) -> int:
        return sum(len(w) for w in self._waiting.values())
