"""Start-up bandwidth probe: write a file into a tier and read it back (O_DIRECT where the
file system allows it, so the read measures the device rather than the page cache)."""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
import time
import uuid
from pathlib import Path

from .names import STAGING_PREFIX
from .transfer import BLOCK, open_direct

# The fastest of a few reads: a probe at start-up competes with the other services starting
# on the same cores, and contention only ever makes a device look slower than it is.
PASSES = 3


def probe_read_bandwidth(tier_root: Path, nbytes: int, cancel: threading.Event) -> float | None:
    """Bytes/s reading ``nbytes`` back from a file written into ``tier_root`` (the fastest of
    ``PASSES`` reads); None if cancelled.

    The file is written with O_DIRECT (else written, fsynced and dropped from the page cache
    with ``posix_fadvise``) and removed afterwards. Errors propagate (a full tier, no access).
    """
    nbytes = max(4096, nbytes // 4096 * 4096)
    path = tier_root / f"{STAGING_PREFIX}probe-{uuid.uuid4().hex[:8]}"
    buf = mmap.mmap(-1, BLOCK)
    buf.write(os.urandom(BLOCK))  # incompressible, so no file system can cheat
    view = memoryview(buf)
    try:
        _write(path, view, nbytes, cancel)
        if cancel.is_set():
            return None
        best = 0.0
        for _ in range(PASSES):
            bps = _read_pass(path, view, nbytes, cancel)
            if bps is None:
                return None
            best = max(best, bps)
        return best or None
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        with contextlib.suppress(BufferError):
            view.release()
            buf.close()


def _read_pass(path: Path, view: memoryview, nbytes: int, cancel: threading.Event) -> float | None:
    """One timed read of the whole file; None if cancelled."""
    fd, direct = open_direct(path)
    try:
        if not direct and hasattr(os, "posix_fadvise"):
            # Not served from the page cache by the previous pass (a no-op on tmpfs).
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        t = time.perf_counter()
        done = 0
        while done < nbytes:
            if cancel.is_set():
                return None
            n = os.readv(fd, [view[: min(BLOCK, nbytes - done)]])
            if n <= 0:
                break
            done += n
        seconds = time.perf_counter() - t
    finally:
        os.close(fd)
    return done / seconds if seconds > 0 and done else 0.0


def _write(path: Path, view: memoryview, nbytes: int, cancel: threading.Event) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    direct = getattr(os, "O_DIRECT", 0)
    try:
        fd = os.open(path, flags | direct, 0o600)
    except OSError:
        fd, direct = os.open(path, flags, 0o600), 0
    try:
        written = 0
        while written < nbytes and not cancel.is_set():
            written += os.writev(fd, [view[: min(BLOCK, nbytes - written)]])
        os.fsync(fd)
        if not direct and hasattr(os, "posix_fadvise"):
            # Without O_DIRECT the data sits in the page cache; ask the kernel to drop it.
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
