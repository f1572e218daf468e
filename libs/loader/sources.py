"""What a writer stores: entries (tensor or alias) and the sources that stream their bytes."""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from .dtypes import dtype_name
from .errors import ConversionError

__all__ = ["Entry", "FileRangeSource", "Source", "TensorSource", "tensor_entries"]


class Source(Protocol):
    """Something that can hand out any range of a tensor's raw bytes (threads may ask at once)."""

    def read_into(self, pos: int, out: memoryview) -> None:
        """Fill ``out`` with the bytes at ``[pos, pos + len(out))``; each range is asked once."""
        ...


class TensorSource:
    """Bytes of an in-memory tensor (made contiguous and moved to CPU when needed)."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor
        self._lock = threading.Lock()
        self._flat: np.ndarray | None = None
        self._served = 0

    def read_into(self, pos: int, out: memoryview) -> None:
        with self._lock:
            flat = self._flat
            if flat is None:
                t = self.tensor.detach()
                if t.device.type != "cpu":
                    t = t.cpu()
                flat = self._flat = t.contiguous().reshape(-1).view(torch.uint8).numpy()
            self._served += len(out)
            if self._served >= flat.size:
                self._flat = None  # all asked for: a CPU copy of a GPU tensor is freed now
        if pos + len(out) > flat.size:
            raise ValueError(f"range [{pos}, {pos + len(out)}) is past the tensor's bytes")
        np.frombuffer(out, dtype=np.uint8)[:] = flat[pos : pos + len(out)]


class FileRangeSource:
    """Bytes at ``[offset, offset + nbytes)`` of a file (safetensors conversion)."""

    def __init__(self, path: Path, offset: int, nbytes: int) -> None:
        self.path, self.offset, self.nbytes = path, offset, nbytes

    def read_into(self, pos: int, out: memoryview) -> None:
        if pos + len(out) > self.nbytes:
            raise ValueError(f"range [{pos}, {pos + len(out)}) is past the tensor's bytes")
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            done = 0
            while done < len(out):
                n = os.preadv(fd, [out[done:]], self.offset + pos + done)
                if n == 0:
                    # The file shrank after its header was checked: never a silent short copy.
                    raise ConversionError(
                        "the file ends inside a tensor",
                        path=self.path,
                        offset=self.offset + pos + done,
                    )
                done += n
        finally:
            os.close(fd)


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
