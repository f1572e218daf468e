"""Blocking copy primitives: exact-size streaming copies that verify chunk hashes on the way,
atomic staging directories, fsync, and OS error mapping. Callers run these in threads."""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import xxhash

from libs.protocol.errors import CancelledError, CorruptError, StorageFullError

from .names import STAGING_PREFIX, TRASH_PREFIX

BLOCK = 8 << 20  # bytes per read: a multiple of 4096 (O_DIRECT), small enough to bound memory

ProgressFn = Callable[[int, int], None]


class Readable(Protocol):
    def readinto(self, buffer: memoryview, /) -> int | None: ...


@dataclass
class Meter:
    """Bytes moved and time spent reading, shared by the copies of one transfer."""

    total: int
    progress: ProgressFn | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    done: int = 0
    read_s: float = 0.0

    def check(self) -> None:
        if self.cancel.is_set():
            raise CancelledError("transfer cancelled")

    def add(self, n: int) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(self.done, max(self.total, self.done))


def storage_full(exc: BaseException, tier: str, path: Path | str) -> StorageFullError | None:
    """A `StorageFullError` if ``exc`` (or what caused it) is a full disk or quota, else None."""
    seen: BaseException | None = exc
    for _ in range(8):  # libraries wrap OS errors; look a few causes deep
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return StorageFullError(f"{tier} tier is full (writing {path})")
        seen = seen.__cause__ or seen.__context__
    return None


def _read_exact(src: Readable, view: memoryview) -> int:
    got = 0
    while got < len(view):
        n = src.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        n = os.write(fd, view)
        view = view[n:]


def copy_exact(
    src: Readable,
    dst: Path | str,
    size: int,
    meter: Meter,
    *,
    what: str,
    tier: str,
    chunk_size: int = 0,
    hashes: Sequence[int] = (),
) -> None:
    """Copy exactly ``size`` bytes from ``src`` into the new file ``dst`` and fsync it.

    With ``hashes``, each ``chunk_size`` chunk's XXH3-64 is checked as it passes (one read, no
    second pass); a mismatch or a short source is a `CorruptError` naming ``what`` and the offset.
    """
    buf = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT sources require
    view = memoryview(buf)
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
        # Read-only: nothing rewrites a tier copy in place (a new copy replaces it whole), so a
        # stray write fails instead of silently changing weights (and breaking a DRAM seal).
        fd = os.open(dst, flags, 0o444)
        try:
            _copy_loop(src, fd, view, size, meter, what, chunk_size, hashes)
            os.fsync(fd)
            if hasattr(os, "posix_fadvise"):
                # Tier files are read with O_DIRECT or from tmpfs: a page-cache copy would
                # only double the memory they take (a no-op on tmpfs).
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError as exc:
            full = storage_full(exc, tier, dst)
            if full is None:
                raise
            raise full from exc
        finally:
            os.close(fd)
    finally:
        _free(buf, view)


def _free(buf: mmap.mmap, view: memoryview) -> None:
    # A traceback may still hold slices of the buffer; then the GC frees it later instead.
    with contextlib.suppress(BufferError):
        view.release()
        buf.close()


def verify_exact(
    src: Readable,
    size: int,
    meter: Meter,
    *,
    what: str,
    chunk_size: int,
    hashes: Sequence[int],
) -> None:
    """Read ``size`` bytes from ``src`` checking chunk hashes, writing nothing."""
    buf = mmap.mmap(-1, BLOCK)
    view = memoryview(buf)
    try:
        _copy_loop(src, None, view, size, meter, what, chunk_size, hashes)
    finally:
        _free(buf, view)


def _copy_loop(
    src: Readable,
    fd: int | None,
    view: memoryview,
    size: int,
    meter: Meter,
    what: str,
    chunk_size: int,
    hashes: Sequence[int],
) -> None:
    hasher = xxhash.xxh3_64() if hashes else None
    chunk_left = chunk_size
    pos = 0
    while pos < size:
        meter.check()
        want = min(len(view), size - pos)
        if hasher is not None:
            want = min(want, chunk_left)
        t = time.perf_counter()
        n = _read_exact(src, view[:want])
        meter.read_s += time.perf_counter() - t
        if n < want:
            raise CorruptError(f"{what}: ends at byte {pos + n}, expected {size}")
        data = view[:n]
        if hasher is not None:
            hasher.update(data)
            chunk_left -= n
            if chunk_left == 0 or pos + n == size:
                i = pos // chunk_size
                actual = hasher.intdigest()
                if i >= len(hashes) or actual != hashes[i]:
                    expected = f"{hashes[i]:016x}" if i < len(hashes) else "none"
                    raise CorruptError(
                        f"{what}: chunk {i} at byte {i * chunk_size}: XXH3-64 {actual:016x}, "
                        f"index says {expected}"
                    )
                hasher.reset()
                chunk_left = chunk_size
        if fd is not None:
            _write_all(fd, data)
        pos += n
        meter.add(n)


def write_bytes(dst: Path, data: bytes, tier: str) -> None:
    """Write a small file and fsync it."""
    try:
        with open(dst, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        full = storage_full(exc, tier, dst)
        if full is None:
            raise
        raise full from exc


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_direct(path: Path) -> tuple[int, bool]:
    """Open for reading with O_DIRECT where the file system allows (not tmpfs): a tier copy
    should not also fill the page cache with what it reads."""
    flag = getattr(os, "O_DIRECT", 0)
    if flag:
        try:
            return os.open(path, os.O_RDONLY | flag | os.O_CLOEXEC), True
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC), False


class Staging:
    """A temporary directory inside a tier directory, so that `commit` is one ``rename``.

    Leaving the context removes whatever is left: a failed or cancelled copy leaves nothing.
    """

    def __init__(self, tier_root: Path) -> None:
        self.root = tier_root
        self.dir = tier_root / f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
        self.checkpoint = self.dir / "checkpoint"

    def __enter__(self) -> Staging:
        self.dir.mkdir()
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def commit(self, dst: Path) -> None:
        """Move the finished checkpoint to ``dst`` (replacing any stale directory there)."""
        fsync_dir(self.checkpoint)
        if dst.exists():
            retire(dst)
        os.rename(self.checkpoint, dst)
        fsync_dir(self.root)


def retire(path: Path) -> None:
    """Remove a checkpoint directory: first renamed away (it vanishes at once for new readers,
    open files stay readable), then deleted."""
    trash = path.parent / f"{TRASH_PREFIX}{uuid.uuid4().hex[:12]}"
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def remove_leftovers(tier_root: Path, is_leftover: Callable[[str], bool]) -> list[str]:
    """Delete staging and trash directories an interrupted run left behind."""
    removed = []
    for entry in os.scandir(tier_root):
        if is_leftover(entry.name):
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                removed.append(entry.name)
    return removed
