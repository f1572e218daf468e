"""What storage needs of an sllm checkpoint: the loader's torch-free parser
(`libs.loader.format`), its errors as `CorruptError`, the directory's byte count, the start-up
size check, and the marker naming the model a tier copy belongs to.

Index file names are plain names (an index from a remote registry must not write outside the
checkpoint directory); names starting with a dot, like the marker's, are reserved for us.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from libs.loader.errors import LoaderError
from libs.loader.format import (
    INDEX_FILE,
    MAX_INDEX_BYTES,
    CheckpointLayout,
    FileInfo,
    PartitionInfo,
    check_sizes,
    parse_layout,
)
from libs.loader.format import read_index_bytes as _read_index_bytes
from libs.protocol.errors import CorruptError

from .names import MARKER_FILE

__all__ = [
    "INDEX_FILE",
    "MAX_INDEX_BYTES",
    "CheckpointFiles",
    "Marker",
    "parse_index",
    "quick_check",
    "read_index_bytes",
]


@dataclass(frozen=True)
class CheckpointFiles:
    """The files an sllm checkpoint directory holds, with their sizes and chunk hashes."""

    layout: CheckpointLayout

    @property
    def chunk_size(self) -> int:
        return self.layout.chunk_size

    @property
    def partitions(self) -> tuple[PartitionInfo, ...]:
        return self.layout.partitions

    @property
    def files(self) -> tuple[FileInfo, ...]:
        return self.layout.files

    @property
    def total_bytes(self) -> int:
        """Bytes of the whole directory: partitions, model files and the index."""
        return self.layout.directory_bytes


def parse_index(raw: bytes) -> CheckpointFiles:
    """Validate index bytes (FORMAT.md's reader rules); `CorruptError` on anything wrong."""
    try:
        return CheckpointFiles(parse_layout(raw))
    except LoaderError as exc:
        raise CorruptError(f"index: {exc.message}") from None


def read_index_bytes(directory: Path) -> bytes:
    """The raw index of a local checkpoint directory (bounded in size); `FileNotFoundError`
    without one, `CorruptError` for one too large."""
    if not (directory / INDEX_FILE).is_file():
        raise FileNotFoundError(directory / INDEX_FILE)
    try:
        return _read_index_bytes(directory)
    except LoaderError as exc:
        raise CorruptError(f"{directory}: {exc.message}") from None


def quick_check(directory: Path) -> CheckpointFiles:
    """The cheap start-up check: the index parses and every file has the size it names."""
    try:
        ckpt = parse_index(read_index_bytes(directory))
    except FileNotFoundError:
        raise CorruptError(f"{directory}: no {INDEX_FILE}") from None
    try:
        check_sizes(directory, ckpt.partitions, ckpt.files)
    except LoaderError as exc:
        raise CorruptError(f"{directory}: {exc.message}") from None
    return ckpt


@dataclass(frozen=True)
class Marker:
    """Written next to the index when a checkpoint enters a tier: which model it is, from where."""

    model: str
    uri: str

    def dump(self) -> bytes:
        return json.dumps({"model": self.model, "uri": self.uri}).encode()

    @staticmethod
    def load(directory: Path) -> Marker:
        try:
            doc = json.loads((directory / MARKER_FILE).read_bytes())
            return Marker(model=str(doc["model"]), uri=str(doc["uri"]))
        except FileNotFoundError:
            raise CorruptError(f"{directory}: no {MARKER_FILE}") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptError(f"{directory}: bad {MARKER_FILE}: {exc!r}") from None
