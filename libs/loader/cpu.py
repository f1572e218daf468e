"""The CPU load path: map in-memory files as zero-copy views, or read into one host buffer."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from . import _native
from ._engine import MODE_MEMORY, MODE_READ, chunk_jobs, run_task
from .errors import ReadError
from .hooks import Cancel, LoadStats, ProgressFn, raise_if_cancelled
from .index import CheckpointIndex
from .pool import HostPool
from .probe import probe_files
from .verified import FileKey, file_key, remember, trusted
from .views import build_views

__all__ = ["DEFAULT_READ_THREADS", "JOB_BYTES", "host_buffer", "load_cpu", "partition_bases"]

# Enough requests in flight to keep a virtual disk's queue full; the threads mostly sleep in I/O.
DEFAULT_READ_THREADS = 16
# One worker request: whole checksum chunks adding up to about this much.
JOB_BYTES = 16 << 20


def partition_bases(index: CheckpointIndex) -> list[int]:
    """Byte offset of each partition when all are laid out back to back."""
    bases, acc = [], 0
    for p in index.partitions:
        bases.append(acc)
        acc += p.size
    return bases


def host_buffer(nbytes: int, pool: HostPool | None) -> _native.Buffer:
    """A page-aligned host buffer: a pool region, or fresh memory (huge pages advised)."""
    return pool.alloc(nbytes) if pool is not None else _native.Buffer.anonymous(nbytes, True)


def chunk_hashes(
    index: CheckpointIndex, verify: bool, skip: Sequence[bool] | None = None
) -> list[np.ndarray]:
    """Per-partition hash arrays for the engine; empty (not verified) when not verifying or
    when ``skip`` says the partition is already trusted."""
    skip = skip or [False] * len(index.partitions)
    return [
        np.array(p.chunks if verify and not s else (), dtype=np.uint64)
        for p, s in zip(index.partitions, skip, strict=True)
    ]


def _settle_trust(
    index: CheckpointIndex,
    paths: Sequence[Path],
    keys: Sequence[FileKey | None],
    trusted: Sequence[bool],
    jobs: np.ndarray,
    threads: int,
    stats: LoadStats,
) -> None:
    """After a mapped load: verify trusted files that changed meanwhile; remember the rest."""
    now = [
        file_key(p, part) if k is not None else None
        for p, part, k in zip(paths, index.partitions, keys, strict=True)
    ]
    changed = [i for i, t in enumerate(trusted) if t and now[i] != keys[i]]
    if changed:
        mine = np.isin(jobs[:, 0], np.array(changed, dtype=np.uint64))
        recheck = chunk_hashes(index, True, skip=[i not in changed for i in range(len(paths))])
        task = _native.Task(
            [str(p) for p in paths],
            [False] * len(paths),
            recheck,
            index.chunk_size,
            jobs[mine],
            threads,
            True,
            MODE_MEMORY,
        )
        run_task(task, paths, total=0, progress=None, cancel=None)
        stats.trusted_bytes -= sum(index.partitions[i].size for i in changed)
    for key, after in zip(keys, now, strict=True):
        if key is not None and after == key:
            remember(key)


def _map(paths: Sequence[Path], sizes: list[int]) -> _native.Buffer:
    try:
        return _native.Buffer.map_files([str(p) for p in paths], sizes)
    except OSError as e:
        raise ReadError(
            f"cannot map partition: {e.strerror}", path=e.filename, errno=e.errno or 0
        ) from None


def load_cpu(
    index: CheckpointIndex,
    paths: Sequence[Path],
    *,
    pool: HostPool | None,
    verify: bool,
    threads: int | None,
    progress: ProgressFn | None,
    cancel: Cancel | None,
    zero_copy: bool | None,
    stats: LoadStats,
    prefault: bool = True,
) -> dict[str, torch.Tensor]:
    """Load every tensor into host memory (see ``load_checkpoint``)."""
    t0 = time.perf_counter()
    residency = probe_files(paths)
    stats.tier = residency.tier
    use_map = zero_copy if zero_copy is not None else all(residency.in_memory)
    total = index.total_bytes
    bases = partition_bases(index)
    stats.bytes, stats.verified = total, verify and total > 0
    stats.mode = "mmap" if use_map else "read"
    t1 = time.perf_counter()
    stats.phases["probe"] = t1 - t0
    if total == 0:
        empty = torch.empty(0, dtype=torch.uint8)
        return build_views(index, {t.name: (empty, 0) for t in index.tensors})

    if use_map:
        buf = _map(paths, [p.size for p in index.partitions])
        mode, direct = MODE_MEMORY, [False] * len(paths)
        nthreads = threads or os.cpu_count() or 1
    else:
        buf = host_buffer(total, pool)
        stats.pooled = pool is not None
        mode, direct = MODE_READ, [not m for m in residency.in_memory]
        nthreads = threads or DEFAULT_READ_THREADS
    t2 = time.perf_counter()
    stats.phases["alloc"] = t2 - t1
    # Mapped tmpfs partitions this process verified, or that their verifier sealed, and that
    # have not changed since, are not hashed again (verified.py, seal.py).
    keys: list[FileKey | None] = [None] * len(paths)
    if use_map and verify:
        keys = [
            file_key(p, part) if tmpfs else None
            for p, part, tmpfs in zip(paths, index.partitions, residency.on_tmpfs, strict=True)
        ]
    trust = trusted(index.path, index.partitions, keys)
    stats.trusted_bytes = sum(p.size for p, t in zip(index.partitions, trust, strict=True) if t)
    every_job = chunk_jobs(
        [p.size for p in index.partitions],
        [buf.address + b for b in bases],
        index.chunk_size,
        JOB_BYTES,
    )
    jobs = every_job
    if use_map:
        # A mapping needs work only where there is something to hash, or pages to fault in.
        work = [i for i, t in enumerate(trust) if (verify and not t) or prefault]
        jobs = every_job[np.isin(every_job[:, 0], np.array(work, dtype=np.uint64))]
    hashes = chunk_hashes(index, verify, skip=trust)
    task = _native.Task(
        [str(p) for p in paths], direct, hashes, index.chunk_size, jobs, nthreads, verify, mode
    )
    stats.threads = min(nthreads, len(jobs))
    try:
        if len(jobs):
            run_task(task, paths, total=total, progress=progress, cancel=cancel)
        else:  # nothing to hash or fault in: the mapping is all there is to a lazy load
            raise_if_cancelled(cancel)
            if progress is not None:
                progress(total, total)
        if use_map and verify:
            _settle_trust(index, paths, keys, trust, every_job, nthreads, stats)
    except BaseException:
        # Drop our references now: a caller that keeps the exception (and so this frame)
        # must not keep the buffer, or a pool region, alive with it.
        del task
        del buf
        raise
    stats.direct_bytes = int(task.direct_bytes)
    stats.o_direct = stats.direct_bytes > 0
    t3 = time.perf_counter()
    stats.phases["io"] = t3 - t2
    flat = torch.frombuffer(buf, dtype=torch.uint8)
    del buf
    out = build_views(
        index,
        {
            t.name: (flat, bases[t.partition] + t.offset if t.partition is not None else 0)
            for t in index.tensors
        },
    )
    stats.phases["views"] = time.perf_counter() - t3
    return out
