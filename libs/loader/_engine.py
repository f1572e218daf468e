"""Drives one native task: hooks polled in the caller's thread, errors mapped to types."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import _native
from .errors import (
    ChecksumMismatch,
    LoadCancelled,
    LoaderError,
    PartitionMissing,
    PartitionTruncated,
    ReadError,
)
from .hooks import Cancel, CancelToken, ProgressFn

__all__ = ["MODE_MEMORY", "MODE_READ", "MODE_RING", "chunk_jobs", "raise_task_error", "run_task"]

MODE_READ, MODE_MEMORY, MODE_RING = 0, 1, 2
POLL_SECONDS = 0.02

_OPEN, _SHORT, _IO, _CHECKSUM, _CANCELLED = 1, 2, 3, 4, 5


def chunk_jobs(
    sizes: Sequence[int], bases: Sequence[int], chunk_size: int, job_bytes: int
) -> np.ndarray:
    """Jobs (file, offset, length, dest) covering every file in whole checksum chunks.

    ``bases`` are destination addresses of each file's first byte (0 where unused); a job is
    ``job_bytes`` rounded to whole chunks, so every job verifies whole chunks.
    """
    step = max(chunk_size, job_bytes // chunk_size * chunk_size)
    rows = [
        (i, off, min(step, size - off), base + off if base else 0)
        for i, (size, base) in enumerate(zip(sizes, bases, strict=True))
        for off in range(0, size, step)
    ]
    return np.array(rows, dtype=np.uint64).reshape(-1, 4)


def _cancel_requested(cancel: Cancel | None) -> bool:
    return cancel is not None and cancel.is_set()


def run_task(
    task: _native.Task,
    paths: Sequence[Path],
    *,
    total: int,
    progress: ProgressFn | None,
    cancel: Cancel | None,
) -> None:
    """Run ``task`` to completion, calling hooks; raise the typed error of a failed task.

    The task is always joined before this returns or raises, so no worker thread writes into
    memory the caller is about to release.
    """
    unsubscribe = cancel.subscribe(task.cancel) if isinstance(cancel, CancelToken) else None
    try:
        task.start()
        if progress is not None:
            progress(0, total)  # "started"; a hook may cancel right away
        if progress is None and not isinstance(cancel, threading.Event):
            task.wait(-1.0)
        else:
            while not task.wait(POLL_SECONDS):
                if _cancel_requested(cancel):
                    task.cancel()
                if progress is not None:
                    progress(task.bytes_done, total)
    except BaseException:
        # A raising progress hook or KeyboardInterrupt: stop the workers before unwinding.
        task.cancel()
        task.wait(-1.0)
        raise
    finally:
        if unsubscribe is not None:
            unsubscribe()
    raise_task_error(task, paths)
    # A cancel that raced the last chunk still wins: whoever cancelled will not use the result,
    # and "cancelled means nothing returned" must not depend on thread timing.
    if _cancel_requested(cancel):
        raise LoadCancelled("load cancelled")
    if progress is not None:
        progress(total, total)


def raise_task_error(task: _native.Task, paths: Sequence[Path]) -> None:
    """Raise the LoaderError matching the task's first failure, if any."""
    err = task.error()
    if err is None:
        return
    raise task_error(err, paths)


def task_error(err: tuple[int, int, int, int, int, int], paths: Sequence[Path]) -> LoaderError:
    """Map a native (kind, file, offset, errno, expected, actual) to a typed error."""
    kind, file, offset, code, expected, actual = err
    path = paths[file] if file < len(paths) else None
    if kind == _CANCELLED:
        return LoadCancelled("load cancelled")
    if kind == _OPEN and code == errno.ENOENT:
        return PartitionMissing("partition file is missing", path=path)
    if kind == _SHORT:
        return PartitionTruncated("partition ends before the index says", path=path, offset=offset)
    if kind == _CHECKSUM:
        return ChecksumMismatch(
            f"chunk checksum mismatch (expected {expected:016x}, got {actual:016x})",
            path=path,
            offset=offset,
            expected=expected,
            actual=actual,
        )
    what = "open" if kind == _OPEN else "read"
    return ReadError(f"{what} failed: {_strerror(code)}", path=path, offset=offset, errno=code)


def _strerror(code: int) -> str:
    return os.strerror(code) if code else "unknown error"
