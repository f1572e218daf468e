"""HostPool: pre-touched (and, with CUDA, pinned) host memory reused across loads."""

from __future__ import annotations

import gc
import os
from types import TracebackType

import torch

from . import _native
from .errors import PoolExhausted

__all__ = ["HostPool"]


class HostPool:
    """A long-lived region of host memory that loads carve their buffers from.

    A worker creates one pool at start-up and passes it to every ``load_checkpoint(pool=...)``.
    The memory is mapped and touched once, here (with transparent huge pages where the kernel
    allows): on virtual machines the first touch of fresh memory is slower than the disk, so
    allocating per load would cap every load far below disk speed; reusing touched memory does not.
    With CUDA available the pool is also registered as pinned memory (``cudaHostRegister``), so it
    can serve as the staging ring of GPU loads.

    Region lifetime: a load takes one region for the whole checkpoint; the returned tensors are
    views of it and keep it alive. The region goes back to the pool when the last of those tensors
    (and anything viewing them) is garbage collected: to unload a model, drop every reference to
    it. There is deliberately no way to free a region under live tensors.

    Args:
        capacity_bytes: size of the pool (rounded up to 4 KiB).
        pinned: register with CUDA; None means "if CUDA is available". True without CUDA raises.
        hugepages: advise transparent huge pages.
        touch_threads: threads that fault the memory in (default: all CPUs).
    """

    def __init__(
        self,
        capacity_bytes: int,
        *,
        pinned: bool | None = None,
        hugepages: bool = True,
        touch_threads: int | None = None,
    ) -> None:
        if capacity_bytes <= 0:
            raise ValueError("capacity_bytes must be positive")
        cuda = torch.cuda.is_available()
        if pinned and not cuda:
            raise ValueError("pinned=True needs CUDA")
        self._pool = _native.Pool(capacity_bytes, hugepages, touch_threads or os.cpu_count() or 1)
        self._pinned = False
        if pinned if pinned is not None else cuda:
            rc = torch.cuda.cudart().cudaHostRegister(  # type: ignore[no-untyped-call]
                self._pool.address, self._pool.capacity, 0
            )
            if int(rc) != 0:
                raise RuntimeError(f"cudaHostRegister failed with CUDA error {int(rc)}")
            self._pinned = True

    @property
    def capacity(self) -> int:
        """Total bytes."""
        return int(self._pool.capacity)

    @property
    def used(self) -> int:
        """Bytes in regions that are still alive."""
        return int(self._pool.used)

    @property
    def largest_free(self) -> int:
        """The largest region a load could get now."""
        return int(self._pool.largest_free)

    @property
    def regions(self) -> int:
        """Number of live regions."""
        return int(self._pool.regions)

    @property
    def pinned(self) -> bool:
        """Whether the memory is registered with CUDA."""
        return self._pinned

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return bool(self._pool.closed)

    def alloc(self, nbytes: int) -> _native.Buffer:
        """A region of at least ``nbytes`` (4 KiB aligned); PoolExhausted if none fits.

        A region whose tensors are unreachable but not yet collected (reference cycles) is
        reclaimed by one garbage collection before giving up.
        """
        region = self._pool.alloc(nbytes)
        if region is None:
            gc.collect()
            region = self._pool.alloc(nbytes)
        if region is None:
            state = "closed" if self.closed else f"largest free region {self.largest_free}"
            raise PoolExhausted(
                f"host pool cannot fit {nbytes} bytes ({state}, {self.used} of {self.capacity} in use)"
            )
        return region

    def close(self) -> None:
        """Stop handing out regions; the memory is unmapped once the last live region is freed."""
        if self._pinned and torch.cuda.is_available():
            torch.cuda.cudart().cudaHostUnregister(self._pool.address)  # type: ignore[no-untyped-call]
            self._pinned = False
        self._pool.close()

    def __enter__(self) -> HostPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"HostPool(capacity={self.capacity}, used={self.used}, regions={self.regions}, "
            f"pinned={self.pinned})"
        )
