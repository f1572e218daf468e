"""Helpers shared by the loader tests."""

from __future__ import annotations

import os
from pathlib import Path

import torch

CHUNK = 8192  # small chunks: many checksums and jobs even in tiny checkpoints


def make_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with odd shapes, a scalar, zero-size, non-contiguous and tied tensors."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(33, 17, generator=g)
    return {
        "embed.weight": base,
        "odd": torch.randn(3, 5, 7, generator=g).to(torch.bfloat16),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "empty": torch.empty(0, 4),
        "transposed": torch.randn(9, 11, generator=g).t(),
        "strided": torch.arange(200, dtype=torch.int64)[::3],
        "big": torch.randn(300, 301, generator=g),
        "mask": torch.rand(13, generator=g) > 0.5,
        "head.weight": base,  # tied to embed.weight
    }


def evict(path: Path) -> None:
    """Drop a checkpoint's partitions from the page cache (they are clean after fsync)."""
    for f in path.glob("part-*.bin"):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (NaN-safe) with equal dtype and shape."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.numel() == 0:
        return True
    return torch.equal(
        a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8)
    )
