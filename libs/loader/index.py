"""The checkpoint index with torch dtypes: the loader's view of `format.CheckpointLayout`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .dtypes import dtype_from_name, dtype_name
from .errors import IndexCorrupt
from .format import (
    ALIGNMENT,
    CHECKSUM,
    FORMAT_NAME,
    FORMAT_VERSION,
    INDEX_FILE,
    MAX_INDEX_BYTES,
    CheckpointLayout,
    FileInfo,
    PartitionInfo,
    parse_layout,
    read_layout,
)

__all__ = [
    "ALIGNMENT",
    "CHECKSUM",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "INDEX_FILE",
    "MAX_INDEX_BYTES",
    "CheckpointIndex",
    "FileInfo",
    "PartitionInfo",
    "TensorInfo",
    "parse_index",
    "read_index",
]


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One stored tensor; ``partition`` is None for tensors without bytes."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    partition: int | None
    offset: int
    nbytes: int


@dataclass(frozen=True)
class CheckpointIndex:
    """A validated index. ``tensors`` are the data entries; ``aliases`` maps name -> target."""

    path: Path
    version: tuple[int, int]
    chunk_size: int
    partitions: tuple[PartitionInfo, ...]
    tensors: tuple[TensorInfo, ...]
    aliases: Mapping[str, str]
    order: tuple[str, ...]
    files: tuple[FileInfo, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        """Bytes in all partitions (what a full load reads)."""
        return sum(p.size for p in self.partitions)

    @property
    def tensor_bytes(self) -> int:
        """Bytes of tensor data, padding and aliases excluded."""
        return sum(t.nbytes for t in self.tensors)

    def partition_path(self, i: int) -> Path:
        """Absolute path of partition ``i``."""
        return self.path / self.partitions[i].file

    def to_json(self) -> dict[str, Any]:
        """The index as the JSON object FORMAT.md describes."""
        by_name = {t.name: t for t in self.tensors}
        entries: list[dict[str, Any]] = []
        for name in self.order:
            if name in self.aliases:
                entries.append({"name": name, "alias_of": self.aliases[name]})
                continue
            t = by_name[name]
            entries.append(
                {
                    "name": name,
                    "dtype": dtype_name(t.dtype),
                    "shape": list(t.shape),
                    "partition": t.partition,
                    "offset": t.offset,
                    "nbytes": t.nbytes,
                }
            )
        return {
            "format": FORMAT_NAME,
            "version": list(self.version),
            "alignment": ALIGNMENT,
            "chunk_size": self.chunk_size,
            "checksum": CHECKSUM,
            "partitions": [
                {"file": p.file, "size": p.size, "chunks": [f"{h:016x}" for h in p.chunks]}
                for p in self.partitions
            ],
            "tensors": entries,
            "files": [{"name": f.name, "size": f.size} for f in self.files],
            "metadata": dict(self.metadata),
        }


def read_index(path: str | os.PathLike[str]) -> CheckpointIndex:
    """Read and validate the index of the checkpoint directory ``path``.

    Raises:
        CheckpointNotFound: no index file in ``path``.
        FormatVersionError: another format, or an unknown major version.
        IndexCorrupt: bad JSON, or an index that breaks a rule of FORMAT.md (a dtype this
            torch build lacks included).
    """
    return with_dtypes(read_layout(path))


def parse_index(raw: bytes, root: Path) -> CheckpointIndex:
    """Validate index bytes of the checkpoint directory ``root``; see :func:`read_index`."""
    return with_dtypes(parse_layout(raw, root))


def with_dtypes(layout: CheckpointLayout) -> CheckpointIndex:
    """The loader's index of a validated layout: dtype names become torch dtypes."""
    tensors = []
    for t in layout.tensors:
        dtype = dtype_from_name(t.dtype)
        if dtype is None:  # a format dtype this (older) torch build does not have
            raise IndexCorrupt(
                f"{t.name}: unknown dtype {t.dtype!r} (not in torch {torch.__version__})",
                path=layout.path / INDEX_FILE,
            )
        tensors.append(TensorInfo(t.name, dtype, t.shape, t.partition, t.offset, t.nbytes))
    return CheckpointIndex(
        path=layout.path,
        version=layout.version,
        chunk_size=layout.chunk_size,
        partitions=layout.partitions,
        tensors=tuple(tensors),
        aliases=layout.aliases,
        order=layout.order,
        files=layout.files,
        metadata=layout.metadata,
    )
