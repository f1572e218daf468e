"""What a writer stores: entries (tensor or alias) and the sources that stream their bytes."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from .dtypes import dtype_name

__all__ = ["Entry", "FileRangeSource", "Sink", "Source", "TensorSource", "tensor_entries"]

_BLOCK = 16 << 20  # copy granularity: bounds memory use and paces progress reports

Sink = Callable[[memoryview], None]


class Source(Protocol):
    """Something that can stream a tensor's raw bytes."""

    def write_to(self, sink: Sink) -> None: ...


class TensorSource:
    """Bytes of an in-memory tensor (made contiguous and moved to CPU when needed)."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor

    def write_to(self, sink: Sink) -> None:
        t = self.tensor.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        flat = t.contiguous().reshape(-1).view(torch.uint8)
        data = flat.numpy().data
        for start in range(0, len(data), _BLOCK):
            sink(data[start : start + _BLOCK])


class FileRangeSource:
    """Bytes at ``[offset, offset + nbytes)`` of a file (safetensors conversion)."""

    def __init__(self, path: Path, offset: int, nbytes: int) -> None:
        self.path, self.offset, self.nbytes = path, offset, nbytes

    def write_to(self, sink: Sink) -> None:
        buf = bytearray(min(_BLOCK, self.nbytes))
        view = memoryview(buf)
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self.offset)
            left = self.nbytes
            while left:
                n = f.readinto(view[: min(len(buf), left)])
                if not n:
                    raise EOFError(f"{self.path} ends inside a tensor")
                sink(view[:n])
                left -= n


@dataclass
class Entry:
    """One name to store: a tensor (dtype, shape, source) or an alias of an earlier entry."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    source: Source | None = None
    alias_of: str | None = None

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def tensor_entries(items: Iterable[tuple[str, torch.Tensor]]) -> list[Entry]:
    """Entries for named tensors, turning repeated views of one storage into aliases."""
    entries: list[Entry] = []
    seen: dict[tuple[object, ...], str] = {}
    for name, t in items:
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name}: not a tensor ({type(t).__name__})")
        if t.layout != torch.strided or t.is_meta or t.is_quantized:
            raise ValueError(f"{name}: only dense tensors with data can be stored")
        dtype_name(t.dtype)  # raises for dtypes the format cannot hold
        key = None
        if t.numel():
            key = (
                t.device,
                t.untyped_storage().data_ptr(),
                t.storage_offset(),
                tuple(t.shape),
                t.stride(),
                t.dtype,
            )
        if key is not None and key in seen:
            entries.append(Entry(name, t.dtype, tuple(t.shape), alias_of=seen[key]))
            continue
        if key is not None:
            seen[key] = name
        entries.append(Entry(name, t.dtype, tuple(t.shape), source=TensorSource(t)))
    return entries
