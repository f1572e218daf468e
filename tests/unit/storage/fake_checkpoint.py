"""Small valid sllm checkpoints written without torch (random bytes as uint8 tensors)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import xxhash


def write_fake_checkpoint(
    path: Path,
    *,
    seed: int = 0,
    partitions: int = 1,
    partition_bytes: int = 256 << 10,
    chunk_size: int = 64 << 10,
) -> Path:
    """A checkpoint directory per libs/loader/FORMAT.md: ``partitions`` files of random bytes,
    a config.json, and an index with every chunk's XXH3-64."""
    path.mkdir(parents=True)
    rng = random.Random(seed)
    parts, tensors = [], []
    for i in range(partitions):
        data = rng.randbytes(partition_bytes)
        name = f"part-{i:05d}.bin"
        (path / name).write_bytes(data)
        chunks = [
            f"{xxhash.xxh3_64_intdigest(data[o : o + chunk_size]):016x}"
            for o in range(0, len(data), chunk_size)
        ]
        parts.append({"file": name, "size": len(data), "chunks": chunks})
        tensors.append(
            {
                "name": f"t{i}",
                "dtype": "uint8",
                "shape": [partition_bytes],
                "partition": i,
                "offset": 0,
                "nbytes": partition_bytes,
            }
        )
    config = json.dumps({"model_type": "fake", "seed": seed}).encode()
    (path / "config.json").write_bytes(config)
    index = {
        "format": "sllm-checkpoint",
        "version": [1, 0],
        "alignment": 4096,
        "chunk_size": chunk_size,
        "checksum": "xxh3_64",
        "partitions": parts,
        "tensors": tensors,
        "files": [{"name": "config.json", "size": len(config)}],
        "metadata": {},
    }
    (path / "sllm-index.json").write_text(json.dumps(index))
    return path


def flip_byte(path: Path, offset: int) -> None:
    """Corrupt one byte of a file in place."""
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))
