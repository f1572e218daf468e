"""The checkpoint index: typed records, strict validation (FORMAT.md's reader rules), JSON."""

from __future__ import annotations

import itertools
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .dtypes import dtype_from_name, dtype_name
from .errors import CheckpointNotFound, FormatVersionError, IndexCorrupt

__all__ = [
    "ALIGNMENT",
    "CHECKSUM",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "INDEX_FILE",
    "CheckpointIndex",
    "FileInfo",
    "PartitionInfo",
    "TensorInfo",
    "parse_index",
    "read_index",
]

FORMAT_NAME = "sllm-checkpoint"
FORMAT_VERSION = (1, 0)
INDEX_FILE = "sllm-index.json"
ALIGNMENT = 4096
CHECKSUM = "xxh3_64"
MAX_INDEX_BYTES = 256 << 20
MAX_CHUNK_SIZE = 1 << 30
MAX_DIMS = 64

_HEX16 = re.compile(r"[0-9a-f]{16}")
_PLAIN_NAME = re.compile(r"[^/\\\x00]+")


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    """One data partition: its file name, exact size and per-chunk XXH3-64 hashes."""

    file: str
    size: int
    chunks: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One stored tensor; ``partition`` is None for tensors without bytes."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    partition: int | None
    offset: int
    nbytes: int


@dataclass(frozen=True, slots=True)
class FileInfo:
    """A model file (config, tokenizer...) carried in the checkpoint directory."""

    name: str
    size: int


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
        IndexCorrupt: bad JSON, or an index that breaks a rule of FORMAT.md.
    """
    root = Path(path)
    if root.name == INDEX_FILE and root.is_file():
        root = root.parent
    index_path = root / INDEX_FILE
    try:
        with open(index_path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_INDEX_BYTES:
                raise IndexCorrupt(f"index is larger than {MAX_INDEX_BYTES} bytes", path=index_path)
            raw = f.read()
    except (FileNotFoundError, NotADirectoryError):
        raise CheckpointNotFound("not an sllm checkpoint (no index)", path=index_path) from None
    return parse_index(raw, root.absolute())


def parse_index(raw: bytes, root: Path) -> CheckpointIndex:
    """Validate index bytes of the checkpoint directory ``root``; see :func:`read_index`."""
    index_path = root / INDEX_FILE
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as e:
        raise IndexCorrupt(
            f"index is not valid JSON: {e.msg}", path=index_path, offset=e.pos
        ) from None
    except (ValueError, RecursionError) as e:  # bad UTF-8, absurd nesting or numbers
        raise IndexCorrupt(f"index is not valid JSON: {e}", path=index_path) from None
    return _Validator(root, index_path).index(doc)


class _Validator:
    """Walks the JSON document; every failure is an IndexCorrupt naming the file."""

    def __init__(self, root: Path, index_path: Path) -> None:
        self.root = root
        self.index_path = index_path

    def fail(
        self, message: str, *, path: Path | None = None, offset: int | None = None
    ) -> IndexCorrupt:
        return IndexCorrupt(message, path=path or self.index_path, offset=offset)

    def obj(self, v: object, what: str) -> dict[str, Any]:
        if not isinstance(v, dict):
            raise self.fail(f"{what} must be an object")
        return v

    def lst(self, v: object, what: str) -> list[Any]:
        if not isinstance(v, list):
            raise self.fail(f"{what} must be a list")
        return v

    def int_(self, v: object, what: str, *, minimum: int = 0) -> int:
        # bool is an int in Python, never in this format.
        if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
            raise self.fail(f"{what} must be an integer >= {minimum}, got {v!r}")
        return v

    def str_(self, v: object, what: str) -> str:
        if not isinstance(v, str) or not v:
            raise self.fail(f"{what} must be a non-empty string")
        return v

    def index(self, doc: object) -> CheckpointIndex:
        d = self.obj(doc, "index")
        if d.get("format") != FORMAT_NAME:
            raise FormatVersionError(
                f"not an {FORMAT_NAME} index (format {d.get('format')!r})", path=self.index_path
            )
        version = self.lst(d.get("version"), "version")
        if len(version) != 2:
            raise self.fail("version must be [major, minor]")
        major, minor = (self.int_(v, "version") for v in version)
        if major != FORMAT_VERSION[0]:
            raise FormatVersionError(
                f"format version {major}.{minor} is not supported (this reader knows "
                f"{FORMAT_VERSION[0]}.x)",
                path=self.index_path,
            )
        if d.get("alignment") != ALIGNMENT or isinstance(d.get("alignment"), bool):
            raise self.fail(f"alignment must be {ALIGNMENT}")
        if d.get("checksum") != CHECKSUM:
            raise self.fail(f"unknown checksum {d.get('checksum')!r}")
        chunk = self.int_(d.get("chunk_size"), "chunk_size", minimum=ALIGNMENT)
        if chunk % ALIGNMENT or chunk > MAX_CHUNK_SIZE:
            raise self.fail(f"chunk_size {chunk} is not a multiple of {ALIGNMENT} up to 1 GiB")
        partitions = tuple(
            self.partition(p, i, chunk)
            for i, p in enumerate(self.lst(d.get("partitions"), "partitions"))
        )
        if len({p.file for p in partitions}) != len(partitions):
            raise self.fail("two partitions name the same file")
        tensors, aliases, order = self.tensors(self.lst(d.get("tensors"), "tensors"), partitions)
        files = tuple(self.file(f) for f in self.lst(d.get("files", []), "files"))
        meta = self.obj(d.get("metadata", {}), "metadata")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            raise self.fail("metadata must map strings to strings")
        return CheckpointIndex(
            path=self.root,
            version=(major, minor),
            chunk_size=chunk,
            partitions=partitions,
            tensors=tensors,
            aliases=aliases,
            order=order,
            files=files,
            metadata=dict(meta),
        )

    def plain_name(self, v: object, what: str) -> str:
        name = self.str_(v, what)
        if not _PLAIN_NAME.fullmatch(name) or name.startswith(".") or name == INDEX_FILE:
            raise self.fail(f"{what} {name!r} is not a plain file name")
        return name

    def partition(self, v: object, i: int, chunk: int) -> PartitionInfo:
        p = self.obj(v, f"partitions[{i}]")
        name = self.plain_name(p.get("file"), f"partitions[{i}].file")
        size = self.int_(p.get("size"), f"partitions[{i}].size")
        if size % ALIGNMENT:
            raise self.fail(
                f"partition size {size} is not a multiple of {ALIGNMENT}", path=self.root / name
            )
        hashes = self.lst(p.get("chunks"), f"partitions[{i}].chunks")
        if len(hashes) != math.ceil(size / chunk):
            raise self.fail(
                f"partition has {len(hashes)} chunk hashes, expected {math.ceil(size / chunk)}",
                path=self.root / name,
            )
        if not all(isinstance(h, str) and _HEX16.fullmatch(h) for h in hashes):
            raise self.fail("chunk hashes must be 16 lower-case hex digits", path=self.root / name)
        return PartitionInfo(file=name, size=size, chunks=tuple(int(h, 16) for h in hashes))

    def file(self, v: object) -> FileInfo:
        f = self.obj(v, "files[]")
        return FileInfo(
            name=self.plain_name(f.get("name"), "file name"),
            size=self.int_(f.get("size"), "file size"),
        )

    def tensors(
        self, entries: list[Any], partitions: tuple[PartitionInfo, ...]
    ) -> tuple[tuple[TensorInfo, ...], dict[str, str], tuple[str, ...]]:
        data: list[TensorInfo] = []
        alias_entries: list[tuple[str, str]] = []
        order: list[str] = []
        for i, v in enumerate(entries):
            e = self.obj(v, f"tensors[{i}]")
            name = self.str_(e.get("name"), f"tensors[{i}].name")
            order.append(name)
            if "alias_of" in e:
                alias_entries.append((name, self.str_(e["alias_of"], f"{name}: alias_of")))
            else:
                data.append(self.tensor(name, e, partitions))
        if len(set(order)) != len(order):
            raise self.fail("duplicate tensor name")
        names = {t.name for t in data}
        for name, target in alias_entries:
            if target not in names:
                raise self.fail(f"{name}: alias_of {target!r} is not a stored tensor")
        self.check_overlaps(data, partitions)
        return tuple(data), dict(alias_entries), tuple(order)

    def tensor(
        self, name: str, e: dict[str, Any], partitions: tuple[PartitionInfo, ...]
    ) -> TensorInfo:
        dname = e.get("dtype")
        dtype = dtype_from_name(dname) if isinstance(dname, str) else None
        if dtype is None:
            raise self.fail(f"{name}: unknown dtype {dname!r}")
        shape_v = self.lst(e.get("shape"), f"{name}: shape")
        if len(shape_v) > MAX_DIMS:
            raise self.fail(f"{name}: more than {MAX_DIMS} dimensions")
        shape = tuple(self.int_(s, f"{name}: shape") for s in shape_v)
        nbytes = self.int_(e.get("nbytes"), f"{name}: nbytes")
        offset = self.int_(e.get("offset"), f"{name}: offset")
        if math.prod(shape) * dtype.itemsize != nbytes:
            raise self.fail(
                f"{name}: nbytes {nbytes} does not match shape {list(shape)} of {dname}"
            )
        part_v = e.get("partition")
        if part_v is None:
            if nbytes:
                raise self.fail(f"{name}: a tensor with bytes needs a partition")
            return TensorInfo(name, dtype, shape, None, 0, 0)
        part = self.int_(part_v, f"{name}: partition")
        if part >= len(partitions):
            raise self.fail(f"{name}: partition {part} does not exist")
        file = self.root / partitions[part].file
        if offset % ALIGNMENT:
            raise self.fail(f"{name}: offset is not {ALIGNMENT}-aligned", path=file, offset=offset)
        if offset + nbytes > partitions[part].size:
            raise self.fail(
                f"{name}: bytes [{offset}, {offset + nbytes}) lie outside the partition "
                f"({partitions[part].size} bytes)",
                path=file,
                offset=offset,
            )
        return TensorInfo(name, dtype, shape, part, offset, nbytes)

    def check_overlaps(self, data: list[TensorInfo], partitions: tuple[PartitionInfo, ...]) -> None:
        spans = sorted(
            (t.partition, t.offset, t.offset + t.nbytes, t.name)
            for t in data
            if t.nbytes and t.partition is not None
        )
        for (p0, _, end0, n0), (p1, start1, _, n1) in itertools.pairwise(spans):
            if p0 == p1 and start1 < end0:
                raise self.fail(
                    f"tensors {n0!r} and {n1!r} overlap",
                    path=self.root / partitions[p1].file,
                    offset=start1,
                )
