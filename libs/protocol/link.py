"""The ups and downs of one NATS connection, for waits that must notice a drop.

Core NATS delivers at most once: a request published, or a reply on its way, when the
connection (or the server) goes down is gone, and its caller would otherwise wait for its whole
timeout. `Link` lets a request see the drop the moment it happens and send again once the
connection is back (`Bus.request_msg` does so for endpoints marked ``resend_on_drop``).
"""

from __future__ import annotations

import asyncio
import math
import time


class Link:
    """Counts drops, remembers when the connection came back, and wakes waiters on a drop."""

    def __init__(self) -> None:
        self.drops = 0
        self.back_at = -math.inf  # time.monotonic() of the last reconnect
        self._up = asyncio.Event()
        self._up.set()
        self._next_drop: asyncio.Future[None] | None = None

    @property
    def is_up(self) -> bool:
        return self._up.is_set()

    def dropped(self) -> None:
        """The connection is lost (the client reconnects on its own)."""
        self.drops += 1
        self._up.clear()
        if self._next_drop is not None and not self._next_drop.done():
            self._next_drop.set_result(None)
        self._next_drop = None

    def restored(self) -> None:
        """The connection is back, its subscriptions restored."""
        self.back_at = time.monotonic()
        self._up.set()

    def next_drop(self) -> asyncio.Future[None]:
        """A future done at the next drop (shared by every waiter; never cancel it)."""
        if self._next_drop is None or self._next_drop.done():
            self._next_drop = asyncio.get_running_loop().create_future()
        return self._next_drop

    async def wait_up(self, timeout: float) -> bool:
        """Wait until the connection is up, at most ``timeout`` seconds; True if it is."""
        if self._up.is_set():
            return True
        try:
            await asyncio.wait_for(self._up.wait(), max(timeout, 0.0))
        except TimeoutError:
            return False
        return True

    def back_within(self, seconds: float) -> bool:
        """Whether the connection came back less than ``seconds`` ago: services re-subscribe
        one by one after a server restart, so "no responders" is then transient."""
        return time.monotonic() - self.back_at < seconds
