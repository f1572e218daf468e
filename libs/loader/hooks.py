"""Load hooks: progress callbacks, cancellation tokens and per-load statistics."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import LoadCancelled

__all__ = ["CancelToken", "LoadStats", "ProgressFn"]

ProgressFn = Callable[[int, int], None]
"""Called as ``progress(bytes_done, bytes_total)`` from the thread that called the loader."""


class CancelToken:
    """A thread-safe flag that aborts a running load.

    Give it to ``load_checkpoint(cancel=...)`` (or ``load_model``) and call :meth:`cancel` from any
    thread: the engine's workers stop before their next chunk, the partly filled buffer is
    released and the load raises :class:`LoadCancelled`. A plain ``threading.Event`` works too
    (it is polled, so reacts within a few tens of milliseconds); a token reacts at once.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []

    def cancel(self) -> None:
        """Request cancellation of every load using this token (idempotent)."""
        with self._lock:
            self._event.set()
            listeners = list(self._listeners)
        for fn in listeners:
            fn()

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` has been called."""
        return self._event.is_set()

    def is_set(self) -> bool:
        """Same as :attr:`cancelled`, so a token can stand in for a ``threading.Event``."""
        return self._event.is_set()

    def subscribe(self, fn: Callable[[], None]) -> Callable[[], None]:
        """Call ``fn`` on cancellation (at once if already cancelled); returns an unsubscriber."""
        with self._lock:
            fired = self._event.is_set()
            if not fired:
                self._listeners.append(fn)
        if fired:
            fn()

        def unsubscribe() -> None:
            with self._lock:
                if fn in self._listeners:
                    self._listeners.remove(fn)

        return unsubscribe


Cancel = CancelToken | threading.Event


def raise_if_cancelled(cancel: Cancel | None) -> None:
    """Raise LoadCancelled if ``cancel`` is set."""
    if cancel is not None and cancel.is_set():
        raise LoadCancelled("load cancelled")


@dataclass
class LoadStats:
    """What one load did; pass an instance as ``load_checkpoint(stats=...)`` to have it filled in.

    Attributes:
        bytes: bytes read or mapped (whole partitions, padding included).
        tensor_bytes: bytes of tensor data.
        seconds: wall time of the whole call.
        tier: where the data came from: ``"tmpfs"`` (DRAM tier), ``"page_cache"`` or ``"disk"``.
        mode: ``"mmap"`` (zero-copy views of mapped files), ``"read"`` (read into host memory)
            or ``"staged"`` (read through the pinned staging ring into device memory).
        threads: engine worker threads.
        o_direct: whether any byte was read with O_DIRECT.
        direct_bytes: bytes read with O_DIRECT.
        verified: whether chunk checksums were verified (a mapped tmpfs partition that this
            process verified before and that has not changed since counts, see trusted_bytes).
        trusted_bytes: bytes of such partitions, not hashed again in this load.
        pooled: whether the buffer was carved from a HostPool.
        devices: the devices the tensors were placed on.
        phases: seconds per phase (``index``, ``probe``, ``alloc``, ``io``, ``views``, ``sync``).
    """

    bytes: int = 0
    tensor_bytes: int = 0
    seconds: float = 0.0
    tier: str = ""
    mode: str = ""
    threads: int = 0
    o_direct: bool = False
    direct_bytes: int = 0
    verified: bool = False
    trusted_bytes: int = 0
    pooled: bool = False
    devices: list[str] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def gbps(self) -> float:
        """Throughput in GB/s (10^9 bytes per second) over the whole call."""
        return self.bytes / self.seconds / 1e9 if self.seconds > 0 else 0.0

    def reset(self) -> None:
        """Clear every field (a stats object can be reused across loads)."""
        fresh = LoadStats()
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(fresh, name))
