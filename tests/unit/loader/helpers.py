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


def arith_bytes(n: int, salt: int) -> torch.Tensor:
    """``n`` pseudo-random bytes from integer arithmetic alone: the same on every torch version,
    so that checkpoints built from them can be compared with digests recorded once."""
    i = torch.arange(n, dtype=torch.int64)
    return ((i * (2654435761 + 2 * salt) + salt * 40503) % 251).to(torch.uint8)


def write_hf_model(root: Path) -> Path:
    """A two-shard safetensors model directory with odd shapes and several dtypes (one tensor
    without bytes), plus a config and a tokenizer file."""
    from safetensors.torch import save_file

    root.mkdir(parents=True)
    shapes = [(37, 53), (1,), (129, 64), (0, 3), (7, 11, 13), (300, 41), (64, 64), (5,), (211, 97)]
    shapes.append((3, 3))
    dtypes = [torch.bfloat16, torch.float32, torch.float16, torch.float32, torch.int8]
    dtypes += [torch.bfloat16, torch.float64, torch.int64, torch.uint8, torch.float16]
    shards: list[dict[str, torch.Tensor]] = [{}, {}]
    for k, (shape, dt) in enumerate(zip(shapes, dtypes, strict=True)):
        n = torch.Size(shape).numel() * dt.itemsize
        shards[k % 2][f"layers.{k}.weight"] = arith_bytes(n, k).view(dt).reshape(shape)
    for s, tensors in enumerate(shards):
        save_file(tensors, str(root / f"model-0000{s + 1}-of-00002.safetensors"))
    (root / "config.json").write_text('{"model_type": "llama", "hidden_size": 64}')
    (root / "tokenizer.json").write_text('{"version": "1.0"}')
    return root
