"""A pure-Python reference reader of the format: slow, plain, obviously correct; the test oracle."""

from __future__ import annotations

import os

import torch
import xxhash

from .errors import ChecksumMismatch, PartitionMissing, PartitionTruncated
from .index import read_index

__all__ = ["reference_load"]


def reference_load(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read every tensor with plain file reads, verifying every chunk hash first.

    Each tensor is its own copy (no shared buffer); aliases are the same object as their target.
    """
    index = read_index(path)
    data: list[bytes] = []
    for i, part in enumerate(index.partitions):
        file = index.partition_path(i)
        if not file.exists():
            raise PartitionMissing("partition file is missing", path=file)
        raw = file.read_bytes()
        if len(raw) < part.size:
            raise PartitionTruncated("partition is short", path=file, offset=len(raw))
        for n, expected in enumerate(part.chunks):
            start = n * index.chunk_size
            actual = xxhash.xxh3_64_intdigest(raw[start : start + index.chunk_size])
            if actual != expected:
                raise ChecksumMismatch(
                    "chunk checksum mismatch",
                    path=file,
                    offset=start,
                    expected=expected,
                    actual=actual,
                )
        data.append(raw)

    out: dict[str, torch.Tensor] = {}
    for t in index.tensors:
        if t.partition is None:
            out[t.name] = torch.empty(t.shape, dtype=t.dtype)
            continue
        raw_bytes = bytearray(data[t.partition][t.offset : t.offset + t.nbytes])
        flat = torch.frombuffer(raw_bytes, dtype=torch.uint8)
        out[t.name] = flat.view(t.dtype).reshape(t.shape)
    return {name: out[index.aliases.get(name, name)] for name in index.order}
