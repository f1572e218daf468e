"""The staged (GPU) path: disk -> ring of pinned staging slots -> one buffer per device.

The engine's threads fill free slots while this thread issues asynchronous host-to-device copies
of filled slots on one copy stream per device; a CUDA event per slot says when the copy has
drained it, so the slot can be refilled. Reads and copies overlap; nothing is allocated per tensor.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import _native
from ._engine import MODE_RING, POLL_SECONDS, chunk_jobs, raise_task_error
from .cpu import DEFAULT_READ_THREADS, chunk_hashes, host_buffer, partition_bases
from .errors import PoolExhausted
from .hooks import Cancel, CancelToken, LoadStats, ProgressFn
from .index import ALIGNMENT, CheckpointIndex
from .pool import HostPool
from .probe import probe_files
from .views import build_views

__all__ = ["Layout", "load_staged", "plan_layout"]

SLOT_BYTES = 16 << 20
SLOTS = 8

# (offset in the slot, device index, offset in the device buffer, bytes)
Segment = tuple[int, int, int, int]


@dataclass(frozen=True)
class Layout:
    """Where each tensor lives: one flat buffer per device."""

    devices: tuple[torch.device, ...]
    sizes: tuple[int, ...]
    offsets: Mapping[str, tuple[int, int]]  # name -> (device index, byte offset)
    mirrors_files: bool  # one device whose buffer is the partitions back to back


def plan_layout(index: CheckpointIndex, placement: Mapping[str, torch.device]) -> Layout:
    """Lay tensors out per device: a single device mirrors the files (one copy per slot);
    a device map packs each device's tensors at aligned offsets."""
    devices = tuple(dict.fromkeys(placement[t.name] for t in index.tensors)) or (
        torch.device("cpu"),
    )
    bases = partition_bases(index)
    if len(devices) == 1:
        offsets = {
            t.name: (0, bases[t.partition] + t.offset if t.partition is not None else 0)
            for t in index.tensors
        }
        return Layout(devices, (index.total_bytes,), offsets, True)
    used = [0] * len(devices)
    packed: dict[str, tuple[int, int]] = {}
    for t in index.tensors:
        d = devices.index(placement[t.name])
        packed[t.name] = (d, used[d])
        used[d] += (t.nbytes + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT
    return Layout(devices, tuple(used), packed, False)


def job_segments(index: CheckpointIndex, layout: Layout, jobs: np.ndarray) -> list[list[Segment]]:
    """The device copies that drain each job's slot."""
    bases = partition_bases(index)
    if layout.mirrors_files:
        return [[(0, 0, bases[int(f)] + int(off), int(n))] for f, off, n, _ in jobs]
    by_part: dict[int, list[tuple[int, int, str]]] = {}
    for t in index.tensors:
        if t.nbytes and t.partition is not None:
            by_part.setdefault(t.partition, []).append((t.offset, t.offset + t.nbytes, t.name))
    for spans in by_part.values():
        spans.sort()
    out: list[list[Segment]] = []
    for f, off, n, _ in jobs:
        start, end = int(off), int(off) + int(n)
        spans = by_part.get(int(f), [])
        segs: list[Segment] = []
        i = max(0, bisect.bisect_right(spans, (start, 1 << 62, "")) - 1)
        for t_start, t_end, name in spans[i:]:
            if t_start >= end:
                break
            lo, hi = max(start, t_start), min(end, t_end)
            if lo >= hi:
                continue
            dev, dst = layout.offsets[name]
            seg = (lo - start, dev, dst + lo - t_start, hi - lo)
            prev = segs[-1] if segs else None
            if (
                prev
                and prev[1] == dev
                and prev[0] + prev[3] == seg[0]
                and prev[2] + prev[3] == seg[2]
            ):
                segs[-1] = (prev[0], dev, prev[2], prev[3] + seg[3])
            else:
                segs.append(seg)
        out.append(segs)
    return out


_shared_lock = threading.Lock()
_shared_ring: HostPool | None = None


def _shared_pool() -> HostPool:
    """The process's pinned staging memory, created on first use and kept: pinning is slow and a
    worker loads many models. Sized for one default ring."""
    global _shared_ring
    with _shared_lock:
        if _shared_ring is None:
            _shared_ring = HostPool(SLOTS * SLOT_BYTES, pinned=True)
        return _shared_ring


@contextmanager
def _staging(nbytes: int, pool: HostPool | None) -> Iterator[torch.Tensor]:
    """A page-aligned uint8 host tensor for the ring, from ``pool``, else from the shared pinned
    pool, else (a concurrent load holds that, or an unusual size) from a private one."""
    if pool is None and not torch.cuda.is_available():  # CPU-only targets: nothing to pin
        yield torch.frombuffer(_native.Buffer.anonymous(nbytes, True), dtype=torch.uint8)
        return
    private = None
    if pool is not None:
        region = pool.alloc(nbytes)
    else:
        try:
            region = _shared_pool().alloc(nbytes)
        except PoolExhausted:
            private = HostPool(nbytes, pinned=True)
            region = private.alloc(nbytes)
    try:
        yield torch.frombuffer(region, dtype=torch.uint8)
    finally:
        # The caller has drained every copy (streams synchronized) before we get here.
        del region
        if private is not None:
            private.close()


def _device_buffer(dev: torch.device, nbytes: int, pool: HostPool | None) -> torch.Tensor:
    if dev.type == "cuda":
        return torch.empty(max(nbytes, 1), dtype=torch.uint8, device=dev)
    return torch.frombuffer(host_buffer(max(nbytes, 1), pool), dtype=torch.uint8)


def load_staged(
    index: CheckpointIndex,
    paths: Sequence[Path],
    placement: Mapping[str, torch.device],
    *,
    pool: HostPool | None,
    verify: bool,
    threads: int | None,
    progress: ProgressFn | None,
    cancel: Cancel | None,
    stats: LoadStats,
    slot_bytes: int = SLOT_BYTES,
    slots: int = SLOTS,
) -> dict[str, torch.Tensor]:
    """Load through the staging ring into per-device buffers (see ``load_checkpoint``)."""
    t0 = time.perf_counter()
    residency = probe_files(paths)
    layout = plan_layout(index, placement)
    stats.tier, stats.mode, stats.bytes = residency.tier, "staged", index.total_bytes
    stats.verified = verify and index.total_bytes > 0
    if any(d.type == "cuda" for d in layout.devices) and not torch.cuda.is_available():
        raise ValueError("a CUDA device was requested but CUDA is not available")
    # Slots of whole checksum chunks; no bigger than the largest partition (small checkpoints).
    largest = max((p.size for p in index.partitions), default=0)
    slot = min(slot_bytes, -(-largest // index.chunk_size) * index.chunk_size)
    slot = max(index.chunk_size, slot // index.chunk_size * index.chunk_size)
    jobs = chunk_jobs([p.size for p in index.partitions], [0] * len(paths), index.chunk_size, slot)
    segments = job_segments(index, layout, jobs)
    nthreads = threads or DEFAULT_READ_THREADS
    nslots = max(2, min(slots, len(jobs)))
    bufs = [_device_buffer(d, n, pool) for d, n in zip(layout.devices, layout.sizes, strict=True)]
    stats.phases["alloc"] = time.perf_counter() - t0
    if not len(jobs):
        return build_views(
            index, {name: (bufs[d], off) for name, (d, off) in layout.offsets.items()}
        )
    try:
        with _staging(nslots * slot, pool) as ring:
            try:
                task = _native.Task(
                    [str(p) for p in paths],
                    [not m for m in residency.in_memory],
                    chunk_hashes(index, verify),
                    index.chunk_size,
                    jobs,
                    nthreads,
                    verify,
                    MODE_RING,
                    ring.data_ptr(),
                    slot,
                    nslots,
                )
                stats.threads = min(nthreads, len(jobs))
                t1 = time.perf_counter()
                _pump(
                    task,
                    ring,
                    slot,
                    segments,
                    layout,
                    bufs,
                    paths,
                    progress,
                    cancel,
                    index.total_bytes,
                )
                stats.phases["io"] = time.perf_counter() - t1
                stats.direct_bytes = int(task.direct_bytes)
                stats.o_direct = stats.direct_bytes > 0
            finally:
                del ring  # a pool region goes back as soon as the context exits
    except BaseException:
        del bufs  # a kept traceback must not pin device memory
        raise
    t2 = time.perf_counter()
    out = build_views(index, {name: (bufs[d], off) for name, (d, off) in layout.offsets.items()})
    stats.phases["views"] = time.perf_counter() - t2
    return out


def _pump(
    task: _native.Task,
    ring: torch.Tensor,
    slot_bytes: int,
    segments: list[list[Segment]],
    layout: Layout,
    bufs: list[torch.Tensor],
    paths: Sequence[Path],
    progress: ProgressFn | None,
    cancel: Cancel | None,
    total: int,
) -> None:
    """Consume filled slots until every job is copied; always joins the task and drains copies."""
    cuda = [d.type == "cuda" for d in layout.devices]
    streams: list[Any] = [
        torch.cuda.Stream(device=d) if c else None  # type: ignore[no-untyped-call]
        for d, c in zip(layout.devices, cuda, strict=True)
    ]
    for device, stream in zip(layout.devices, streams, strict=True):
        if stream is not None:
            # The device buffers were allocated on the current stream, whose queued work may
            # still use that memory's previous tenant: copies must start after it.
            stream.wait_stream(torch.cuda.current_stream(device))
    pending: deque[tuple[int, list[Any]]] = deque()  # (slot, events of its copies)
    unsubscribe = cancel.subscribe(task.cancel) if isinstance(cancel, CancelToken) else None
    polled = isinstance(cancel, threading.Event) or progress is not None
    last = time.perf_counter()
    delivered = 0
    try:
        task.start()
        if progress is not None:
            progress(0, total)
        while delivered < len(segments):
            while pending and all(e.query() for e in pending[0][1]):
                task.release(pending.popleft()[0])
            job, slot = task.next_ready(0.0 if pending else (POLL_SECONDS if polled else -1.0))
            if job == -2 and pending:
                # Nothing read yet: wait for the oldest copy instead, so its slot can be refilled.
                for e in pending[0][1]:
                    e.synchronize()
                continue
            if job == -1:
                break
            if job >= 0:
                events = _copy_out(ring, slot * slot_bytes, segments[job], bufs, streams)
                if events:
                    pending.append((slot, events))
                else:
                    task.release(slot)
                delivered += 1
            if polled and time.perf_counter() - last >= POLL_SECONDS:
                last = time.perf_counter()
                if cancel is not None and cancel.is_set():
                    task.cancel()
                if progress is not None:
                    progress(task.bytes_done, total)
    except BaseException:
        task.cancel()
        raise
    finally:
        task.wait(-1.0)
        for s in streams:
            if s is not None:
                s.synchronize()
        if unsubscribe is not None:
            unsubscribe()
    raise_task_error(task, paths)
    if delivered < len(segments):
        raise RuntimeError("staging ring stopped early without an error")  # engine invariant
    if progress is not None:
        progress(total, total)


def _copy_out(
    ring: torch.Tensor, base: int, segs: list[Segment], bufs: list[torch.Tensor], streams: list[Any]
) -> list[Any]:
    """Issue the copies draining one slot; return CUDA events that mark their completion."""
    events = []
    for src, dev, dst, n in segs:
        source = ring[base + src : base + src + n]
        target = bufs[dev][dst : dst + n]
        stream = streams[dev]
        if stream is None:
            target.copy_(source)
            continue
        with torch.cuda.stream(stream):
            target.copy_(source, non_blocking=True)
            event = torch.cuda.Event()  # type: ignore[no-untyped-call]
            event.record(stream)
        events.append(event)
    return events
