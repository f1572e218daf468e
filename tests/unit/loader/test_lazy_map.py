"""`prefault=False`: a trusted tmpfs (DRAM tier) copy maps lazily, with the same tensors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from libs.loader import CancelToken, LoadCancelled, LoadStats, load_checkpoint, save_checkpoint

from .helpers import CHUNK, same_bytes

pytestmark = pytest.mark.unit


def test_lazy_map_returns_the_same_tensors(shm_dir: Path, state: dict[str, torch.Tensor]) -> None:
    path = save_checkpoint(state, shm_dir / "ckpt", partition_size=200_000, chunk_size=CHUNK)
    stats = LoadStats()
    seen: list[tuple[int, int]] = []
    lazy = load_checkpoint(
        path,
        verify=False,
        prefault=False,
        zero_copy=True,
        stats=stats,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert stats.mode == "mmap"
    assert seen[-1][0] == seen[-1][1]
    eager = load_checkpoint(path, verify=True)
    assert lazy.keys() == eager.keys()
    for name in eager:
        assert same_bytes(lazy[name], eager[name]), name


def test_lazy_map_still_honours_cancellation(shm_dir: Path, state: dict[str, torch.Tensor]) -> None:
    path = save_checkpoint(state, shm_dir / "ckpt", chunk_size=CHUNK)
    token = CancelToken()
    token.cancel()
    with pytest.raises(LoadCancelled):
        load_checkpoint(path, verify=False, prefault=False, zero_copy=True, cancel=token)
