"""What storage needs of an sllm checkpoint (libs/loader/FORMAT.md), without importing torch.

`libs.loader.read_index` validates tensors too but pulls torch into the process; the storage
service only moves files, so it checks the index fields that name and size them (plain file
names: an index from a remote registry must not write outside the checkpoint directory).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from libs.protocol.errors import CorruptError

from .names import MARKER_FILE

INDEX_FILE = "sllm-index.json"
FORMAT_NAME = "sllm-checkpoint"
FORMAT_MAJOR = 1
ALIGNMENT = 4096
MAX_CHUNK_SIZE = 1 << 30
MAX_INDEX_BYTES = 256 << 20
_HEX16 = re.compile(r"[0-9a-f]{16}")
_PLAIN = re.compile(r"[^/\\\x00]+")


@dataclass(frozen=True)
class Partition:
    file: str
    size: int
    chunks: tuple[int, ...]


@dataclass(frozen=True)
class StoredFile:
    name: str
    size: int


@dataclass(frozen=True)
class CheckpointFiles:
    """The files an sllm checkpoint directory holds, with their sizes and chunk hashes."""

    chunk_size: int
    partitions: tuple[Partition, ...]
    files: tuple[StoredFile, ...]
    index_bytes: int

    @property
    def total_bytes(self) -> int:
        """Bytes of the whole directory: partitions, model files and the index."""
        return (
            sum(p.size for p in self.partitions)
            + sum(f.size for f in self.files)
            + self.index_bytes
        )


def _int(v: object, what: str, minimum: int = 0) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
        raise CorruptError(f"index: {what} must be an integer >= {minimum}, got {v!r}")
    return v


def _name(v: object, what: str) -> str:
    if (
        not isinstance(v, str)
        or not _PLAIN.fullmatch(v)
        or v.startswith(".")
        or v in (INDEX_FILE, MARKER_FILE)
    ):
        raise CorruptError(f"index: {what} {v!r} is not a plain file name")
    return v


def _list(v: object, what: str) -> list[Any]:
    if not isinstance(v, list):
        raise CorruptError(f"index: {what} must be a list")
    return v


def parse_index(raw: bytes) -> CheckpointFiles:
    """Validate the file-level fields of index bytes; `CorruptError` on anything wrong."""
    if len(raw) > MAX_INDEX_BYTES:
        raise CorruptError(f"index: larger than {MAX_INDEX_BYTES} bytes")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise CorruptError(f"index: not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        raise CorruptError(f"index: not an {FORMAT_NAME} index")
    version = _list(doc.get("version"), "version")
    if len(version) != 2 or _int(version[0], "version") != FORMAT_MAJOR:
        raise CorruptError(f"index: unsupported format version {version!r}")
    chunk = _int(doc.get("chunk_size"), "chunk_size", ALIGNMENT)
    if chunk % ALIGNMENT or chunk > MAX_CHUNK_SIZE:
        raise CorruptError(f"index: bad chunk_size {chunk}")
    partitions = []
    for i, p in enumerate(_list(doc.get("partitions"), "partitions")):
        if not isinstance(p, dict):
            raise CorruptError(f"index: partitions[{i}] must be an object")
        size = _int(p.get("size"), f"partitions[{i}].size")
        if size % ALIGNMENT:
            raise CorruptError(f"index: partitions[{i}].size {size} is not 4096-aligned")
        hashes = _list(p.get("chunks"), f"partitions[{i}].chunks")
        if len(hashes) != math.ceil(size / chunk) or not all(
            isinstance(h, str) and _HEX16.fullmatch(h) for h in hashes
        ):
            raise CorruptError(f"index: partitions[{i}].chunks are not {size}/{chunk} hashes")
        partitions.append(
            Partition(
                _name(p.get("file"), f"partitions[{i}].file"),
                size,
                tuple(int(h, 16) for h in hashes),
            )
        )
    files = []
    for i, f in enumerate(_list(doc.get("files", []), "files")):
        if not isinstance(f, dict):
            raise CorruptError(f"index: files[{i}] must be an object")
        files.append(
            StoredFile(_name(f.get("name"), f"files[{i}].name"), _int(f.get("size"), "size"))
        )
    names = [p.file for p in partitions] + [f.name for f in files]
    if len(set(names)) != len(names):
        raise CorruptError("index: two entries name the same file")
    return CheckpointFiles(chunk, tuple(partitions), tuple(files), len(raw))


def read_index_bytes(directory: Path) -> bytes:
    """The raw index of a local checkpoint directory (bounded in size)."""
    with open(directory / INDEX_FILE, "rb") as f:
        if os.fstat(f.fileno()).st_size > MAX_INDEX_BYTES:
            raise CorruptError(f"{directory}: index larger than {MAX_INDEX_BYTES} bytes")
        return f.read()


def quick_check(directory: Path) -> CheckpointFiles:
    """The cheap start-up check: the index parses and every file has the size it names."""
    try:
        ckpt = parse_index(read_index_bytes(directory))
    except FileNotFoundError:
        raise CorruptError(f"{directory}: no {INDEX_FILE}") from None
    for name, size in [(p.file, p.size) for p in ckpt.partitions] + [
        (f.name, f.size) for f in ckpt.files
    ]:
        try:
            actual = (directory / name).stat().st_size
        except FileNotFoundError:
            raise CorruptError(f"{directory / name}: missing") from None
        if actual != size:
            raise CorruptError(f"{directory / name}: {actual} bytes, the index says {size}")
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
