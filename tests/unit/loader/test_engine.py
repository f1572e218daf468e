"""Engine behaviour: the host pool, zero-copy DRAM tier, hooks, and the staging ring on CPU."""

from __future__ import annotations

import gc
import itertools
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from libs.loader import (
    CancelToken,
    ChecksumMismatch,
    HostPool,
    LoadCancelled,
    LoadStats,
    PoolExhausted,
    ProgressFn,
    load_checkpoint,
    read_index,
    save_checkpoint,
)
from libs.loader._engine import chunk_jobs
from libs.loader.load import partition_paths, resolve_placement
from libs.loader.reference import reference_load
from libs.loader.staged import job_segments, load_staged, plan_layout

from .helpers import CHUNK, make_state, same_bytes

pytestmark = pytest.mark.unit


def in_range(t: torch.Tensor, start: int, size: int) -> bool:
    return start <= t.data_ptr() and t.data_ptr() + t.nbytes <= start + size


@pytest.fixture
def big_ckpt(tmp_path: Path) -> Path:
    """32 MiB in many small chunks: loads take long enough to cancel in the middle."""
    g = torch.Generator().manual_seed(3)
    state = {f"w{i}": torch.randn(1 << 20, generator=g) for i in range(8)}
    return save_checkpoint(state, tmp_path / "big", chunk_size=64 << 10)


def test_pool_regions_are_reused_across_loads(tmp_path: Path) -> None:
    paths = [
        save_checkpoint(make_state(seed), tmp_path / f"m{seed}", chunk_size=CHUNK)
        for seed in range(3)
    ]
    with HostPool(4 << 20, pinned=False) as pool:
        assert pool.used == 0
        base = pool._pool.address
        for path in paths * 2:
            stats = LoadStats()
            loaded = load_checkpoint(path, pool=pool, zero_copy=False, stats=stats)
            assert stats.pooled
            assert pool.regions == 1
            assert all(in_range(t, base, pool.capacity) for t in loaded.values() if t.numel())
            assert same_bytes(loaded["big"], reference_load(path)["big"])
            del loaded
            assert pool.used == 0  # the region came back when the tensors died


def test_pool_exhaustion_is_typed_and_live_regions_are_kept(ckpt: Path) -> None:
    with HostPool(read_index(ckpt).total_bytes + 4096, pinned=False) as pool:
        first = load_checkpoint(ckpt, pool=pool, zero_copy=False)
        with pytest.raises(PoolExhausted):
            load_checkpoint(ckpt, pool=pool, zero_copy=False)
        assert pool.regions == 1
        first["big"].add_(0)  # still valid memory
        del first
        gc.collect()
        assert pool.used == 0


def test_pool_memory_outlives_close_while_tensors_live(ckpt: Path) -> None:
    pool = HostPool(1 << 20, pinned=False)
    loaded = load_checkpoint(ckpt, pool=pool, zero_copy=False)
    pool.close()
    assert same_bytes(loaded["big"], reference_load(ckpt)["big"])
    with pytest.raises(PoolExhausted, match="closed"):
        load_checkpoint(ckpt, pool=pool, zero_copy=False)


def test_dram_tier_is_zero_copy_and_private(ckpt: Path, shm_dir: Path) -> None:
    shm_ckpt = Path(shutil.copytree(ckpt, shm_dir / "ckpt"))
    stats = LoadStats()
    loaded = load_checkpoint(shm_ckpt, stats=stats)
    assert (stats.tier, stats.mode, stats.o_direct) == ("tmpfs", "mmap", False)
    ref = reference_load(shm_ckpt)
    for name in ref:
        assert same_bytes(loaded[name], ref[name]), name
    # The tensor's memory is the file's page: writing to it is copy-on-write, never to the file.
    loaded["big"].fill_(0.0)
    assert same_bytes(load_checkpoint(shm_ckpt)["big"], ref["big"])


def corrupt(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 1]))


def test_dram_tier_reload_skips_rehashing_until_a_file_changes(ckpt: Path, shm_dir: Path) -> None:
    shm_ckpt = Path(shutil.copytree(ckpt, shm_dir / "ckpt"))
    total = read_index(shm_ckpt).total_bytes
    first, second = LoadStats(), LoadStats()
    load_checkpoint(shm_ckpt, stats=first)
    load_checkpoint(shm_ckpt, stats=second)
    assert first.trusted_bytes == 0
    assert second.trusted_bytes == total
    assert second.verified
    # A write moves mtime/ctime: the partition is no longer trusted and is hashed again.
    part = shm_ckpt / max(read_index(shm_ckpt).partitions, key=lambda p: p.size).file
    corrupt(part, 100)
    with pytest.raises(ChecksumMismatch) as e:
        load_checkpoint(shm_ckpt)
    assert (e.value.path, e.value.offset) == (str(part), 0)


def test_trusted_file_that_changes_during_the_load_is_verified_after_all(
    ckpt: Path, shm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from libs.loader import cpu

    shm_ckpt = Path(shutil.copytree(ckpt, shm_dir / "ckpt"))
    part = shm_ckpt / max(read_index(shm_ckpt).partitions, key=lambda p: p.size).file
    corrupt(part, 100)
    calls = iter(range(10**6))
    # Pretend: verified earlier (by this process or a sealing verifier).
    monkeypatch.setattr(cpu, "trusted", lambda directory, parts, keys: [True] * len(parts))
    monkeypatch.setattr(cpu, "file_key", lambda path, p: (next(calls), 0, 0, 0, 0, 0))
    with pytest.raises(ChecksumMismatch):
        load_checkpoint(shm_ckpt)


@pytest.mark.parametrize("zero_copy", [False, True])
def test_progress_is_monotonic_and_reaches_total(big_ckpt: Path, zero_copy: bool) -> None:
    calls: list[tuple[int, int]] = []
    load_checkpoint(big_ckpt, zero_copy=zero_copy, progress=lambda d, t: calls.append((d, t)))
    total = read_index(big_ckpt).total_bytes
    assert calls[0] == (0, total)
    assert calls[-1] == (total, total)
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(calls))


@pytest.mark.parametrize("zero_copy", [False, True])
def test_cancel_mid_load_raises_and_leaves_nothing(big_ckpt: Path, zero_copy: bool) -> None:
    token = CancelToken()
    seen: list[int] = []

    def progress(done: int, total: int) -> None:
        seen.append(done)
        token.cancel()  # from inside the load: the engine is mid-flight

    with HostPool(64 << 20, pinned=False) as pool:
        with pytest.raises(LoadCancelled):
            load_checkpoint(
                big_ckpt, pool=pool, zero_copy=zero_copy, threads=1, progress=progress, cancel=token
            )
        assert seen == [0]
        assert pool.used == 0


def test_cancel_from_another_thread_with_an_event(big_ckpt: Path) -> None:
    event = threading.Event()
    event.set()  # set before the call: refused at once
    with pytest.raises(LoadCancelled):
        load_checkpoint(big_ckpt, cancel=event)


def test_cancel_after_completion_changes_nothing(ckpt: Path) -> None:
    token = CancelToken()
    loaded = load_checkpoint(ckpt, cancel=token)
    token.cancel()
    assert loaded["big"].numel() == 300 * 301


def test_raising_progress_hook_aborts_the_load(big_ckpt: Path) -> None:
    def progress(done: int, total: int) -> None:
        raise KeyError("stop")

    with pytest.raises(KeyError):
        load_checkpoint(big_ckpt, zero_copy=False, progress=progress)


def test_stats_report_the_load(ckpt: Path) -> None:
    stats = LoadStats()
    load_checkpoint(ckpt, zero_copy=False, threads=3, stats=stats)
    index = read_index(ckpt)
    assert stats.bytes == index.total_bytes
    assert stats.tensor_bytes == index.tensor_bytes
    assert stats.mode == "read"
    assert stats.verified
    assert 1 <= stats.threads <= 3
    assert stats.seconds > 0
    assert {"index", "probe", "alloc", "io", "views"} <= stats.phases.keys()


# --- the staging ring (the GPU path's engine), exercised with CPU targets -----------------------


@pytest.mark.parametrize("use_pool", [False, True])
def test_staging_ring_reuses_slots_and_matches_reference(ckpt: Path, use_pool: bool) -> None:
    index = read_index(ckpt)
    placement = resolve_placement("cpu", index)
    stats = LoadStats()
    pool = HostPool(4 << 20, pinned=False) if use_pool else None
    calls: list[int] = []
    loaded = load_staged(
        index,
        partition_paths(index),
        placement,
        pool=pool,
        verify=True,
        threads=3,
        progress=lambda d, t: calls.append(d),
        cancel=None,
        stats=stats,
        slot_bytes=CHUNK,  # many more jobs than slots
        slots=2,
    )
    assert stats.mode == "staged"
    assert calls[-1] == index.total_bytes
    ref = reference_load(ckpt)
    assert list(loaded) == list(ref)
    for name in ref:
        assert same_bytes(loaded[name], ref[name]), name
    if pool is not None:
        del loaded
        assert pool.used == 0


def _ring_load(
    ckpt: Path, progress: ProgressFn | None, cancel: CancelToken | None
) -> dict[str, torch.Tensor]:
    index = read_index(ckpt)
    return load_staged(
        index,
        partition_paths(index),
        resolve_placement("cpu", index),
        pool=None,
        verify=True,
        threads=2,
        progress=progress,
        cancel=cancel,
        stats=LoadStats(),
        slot_bytes=64 << 10,
        slots=2,
    )


def test_staging_ring_reports_corruption_and_cancellation(big_ckpt: Path) -> None:
    token = CancelToken()
    with pytest.raises(LoadCancelled):
        _ring_load(big_ckpt, lambda d, t: token.cancel(), token)
    part = big_ckpt / read_index(big_ckpt).partitions[0].file
    with open(part, "r+b") as f:
        f.seek(5 << 20)
        f.write(b"\x00\x01")
    with pytest.raises(ChecksumMismatch) as e:
        _ring_load(big_ckpt, None, None)
    assert (e.value.path, e.value.offset) == (str(part), 5 << 20)


def test_device_map_segments_place_every_tensor(ckpt: Path) -> None:
    """Simulate a two-GPU device map: copying each slot's segments rebuilds every tensor."""
    index = read_index(ckpt)
    devs = {
        t.name: torch.device("cuda", 1 if t.name in ("big", "embed.weight") else 0)
        for t in index.tensors
    }
    layout = plan_layout(index, devs)
    assert len(layout.devices) == 2
    assert not layout.mirrors_files
    files = [np.fromfile(p, dtype=np.uint8) for p in partition_paths(index)]
    jobs = chunk_jobs(
        [p.size for p in index.partitions], [0] * len(files), index.chunk_size, 2 * CHUNK
    )
    bufs = [np.zeros(n, dtype=np.uint8) for n in layout.sizes]
    for (f, off, n, _), segs in zip(jobs, job_segments(index, layout, jobs), strict=True):
        slot = files[int(f)][int(off) : int(off) + int(n)]
        for src, dev, dst, size in segs:
            bufs[dev][dst : dst + size] = slot[src : src + size]
    for t in index.tensors:
        if t.nbytes and t.partition is not None:
            dev, off = layout.offsets[t.name]
            start = t.offset
            assert bytes(bufs[dev][off : off + t.nbytes]) == bytes(
                files[t.partition][start : start + t.nbytes]
            )
            assert off % 4096 == 0
            assert layout.devices[dev] == devs[t.name]


def test_device_map_prefixes_pick_the_longest_match(ckpt: Path) -> None:
    index = read_index(ckpt)
    placement = resolve_placement({"": "cpu", "emb": "cuda:0", "embed.": "cuda:1"}, index)
    assert placement["embed.weight"] == torch.device("cuda", 1)
    assert placement["big"] == torch.device("cpu")
    with pytest.raises(ValueError, match="no entry"):
        resolve_placement({"big": "cpu"}, index)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without CUDA")
def test_cuda_device_without_cuda_is_a_clear_error(ckpt: Path) -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        load_checkpoint(ckpt, "cuda")
