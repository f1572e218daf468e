"""The checkpoint format without torch: constants, the validated index (FORMAT.md's reader rules)
and the size check of a directory's files. The loader (`index.py` adds torch dtypes) and the
storage service (which only moves and verifies files) both parse indexes here.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import (
    CheckpointNotFound,
    FormatVersionError,
    IndexCorrupt,
    PartitionMissing,
    PartitionTruncated,
)

__all__ = [
    "ALIGNMENT",
    "CHECKSUM",
    "DTYPE_SIZES",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "INDEX_FILE",
    "MAX_CHUNK_SIZE",
    "MAX_INDEX_BYTES",
    "CheckpointLayout",
    "FileInfo",
    "PartitionInfo",
    "TensorEntry",
    "check_sizes",
    "parse_layout",
    "read_index_bytes",
    "read_layout",
]

FORMAT_NAME = "sllm-checkpoint"
FORMAT_VERSION = (1, 0)
INDEX_FILE = "sllm-index.json"
ALIGNMENT = 4096
CHECKSUM = "xxh3_64"
MAX_INDEX_BYTES = 256 << 20
MAX_CHUNK_SIZE = 1 << 30
MAX_DIMS = 64

# The format's dtype names (torch's, without ``torch.``) and their element sizes in bytes;
# sub-byte dtypes take one byte per element, as torch stores them.
DTYPE_SIZES: Mapping[str, int] = {
    **dict.fromkeys(
        [
            "bool",
            "uint8",
            "int8",
            "float8_e4m3fn",
            "float8_e5m2",
            "float8_e4m3fnuz",
            "float8_e5m2fnuz",
            "float8_e8m0fnu",
            "float4_e2m1fn_x2",
            "bits1x8",
            "bits2x4",
            "bits4x2",
            "bits8",
        ],
        1,
    ),
    **dict.fromkeys([f"uint{i}" for i in range(1, 8)] + [f"int{i}" for i in range(1, 8)], 1),
    **dict.fromkeys(["int16", "uint16", "float16", "bfloat16", "bits16"], 2),
    **dict.fromkeys(["int32", "uint32", "float32", "complex32"], 4),
    **dict.fromkeys(["int64", "uint64", "float64", "complex64"], 8),
    "complex128": 16,
}

_HEX16 = re.compile(r"[0-9a-f]{16}")
_PLAIN_NAME = re.compile(r"[^/\\\x00]+")


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    """One data partition: its file name, exact size and per-chunk XXH3-64 hashes."""

    file: str
    size: int
    chunks: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class FileInfo:
    """A model file (config, tokenizer...) carried in the checkpoint directory."""

    name: str
    size: int


@dataclass(frozen=True, slots=True)
class TensorEntry:
    """One stored tensor with its dtype by name; ``partition`` is None for tensors without bytes."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    partition: int | None
    offset: int
    nbytes: int


@dataclass(frozen=True)
class CheckpointLayout:
    """A validated index: what the directory holds and where every tensor's bytes are."""

    path: Path
    version: tuple[int, int]
    chunk_size: int
    partitions: tuple[PartitionInfo, ...]
    tensors: tuple[TensorEntry, ...]
    aliases: Mapping[str, str]
    order: tuple[str, ...]
    files: tuple[FileInfo, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    index_bytes: int = 0

    @property
    def partition_bytes(self) -> int:
        """Bytes in all partitions (what a full load reads)."""
        return sum(p.size for p in self.partitions)

    @property
    def directory_bytes(self) -> int:
        """Bytes of the whole directory: partitions, model files and the index."""
        return self.partition_bytes + sum(f.size for f in self.files) + self.index_bytes


def read_index_bytes(path: str | os.PathLike[str]) -> bytes:
    """The raw index of the checkpoint directory ``path`` (or of the index file itself).

    Raises:
        CheckpointNotFound: no index file.
        IndexCorrupt: the index is larger than `MAX_INDEX_BYTES`.
    """
    return _read(_index_path(Path(path)))


def read_layout(path: str | os.PathLike[str]) -> CheckpointLayout:
    """Read and validate the index of the checkpoint directory ``path``; see `parse_layout`."""
    index_path = _index_path(Path(path))
    return parse_layout(_read(index_path), index_path.parent.absolute())


def _index_path(path: Path) -> Path:
    return path if path.name == INDEX_FILE and path.is_file() else path / INDEX_FILE


def _read(index_path: Path) -> bytes:
    try:
        with open(index_path, "rb") as f:
            if os.fstat(f.fileno()).st_size > MAX_INDEX_BYTES:
                raise IndexCorrupt(f"index is larger than {MAX_INDEX_BYTES} bytes", path=index_path)
            return f.read(MAX_INDEX_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError):
        raise CheckpointNotFound("not an sllm checkpoint (no index)", path=index_path) from None


def parse_layout(raw: bytes, root: Path | None = None) -> CheckpointLayout:
    """Validate index bytes of the checkpoint directory ``root`` (None: bytes from elsewhere,
    errors then name no directory).

    Raises:
        FormatVersionError: another format, or an unknown major version.
        IndexCorrupt: bad JSON, too large, or an index that breaks a rule of FORMAT.md.
    """
    base = root if root is not None else Path()
    index_path = base / INDEX_FILE
    if len(raw) > MAX_INDEX_BYTES:
        raise IndexCorrupt(f"index is larger than {MAX_INDEX_BYTES} bytes", path=index_path)
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as e:
        raise IndexCorrupt(
            f"index is not valid JSON: {e.msg}", path=index_path, offset=e.pos
        ) from None
    except (ValueError, RecursionError) as e:  # bad UTF-8, absurd nesting or numbers
        raise IndexCorrupt(f"index is not valid JSON: {e}", path=index_path) from None
    return _Validator(base, index_path, len(raw)).index(doc)


def check_sizes(
    root: Path, partitions: Sequence[PartitionInfo], files: Sequence[FileInfo] = ()
) -> list[Path]:
    """The partition paths in ``root``, after checking that each partition (and each of
    ``files``) exists with exactly its declared size.

    Raises:
        PartitionMissing: a file is missing.
        PartitionTruncated: a file is shorter than the index says (offset: its size).
        IndexCorrupt: a file is longer than the index says.
    """
    items = [(p.file, p.size) for p in partitions] + [(f.name, f.size) for f in files]
    paths = []
    for name, size in items:
        path = root / name
        try:
            actual = os.stat(path).st_size
        except FileNotFoundError:
            raise PartitionMissing(f"{name} is missing", path=path) from None
        if actual < size:
            raise PartitionTruncated(
                f"{name}: {actual} bytes, the index says {size}", path=path, offset=actual
            )
        if actual > size:
            raise IndexCorrupt(
                f"{name}: {actual} bytes, the index says {size}", path=path, offset=size
            )
        paths.append(path)
    return paths[: len(partitions)]


class _Validator:
    """Walks the JSON document; every failure is an IndexCorrupt naming the file."""

    def __init__(self, root: Path, index_path: Path, nbytes: int) -> None:
        self.root = root
        self.index_path = index_path
        self.nbytes = nbytes

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

    def index(self, doc: object) -> CheckpointLayout:
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
        files = tuple(self.file(f, i) for i, f in enumerate(self.lst(d.get("files", []), "files")))
        names = [p.file for p in partitions] + [f.name for f in files]
        if len(set(names)) != len(names):
            raise self.fail("two partitions or files name the same file")
        tensors, aliases, order = self.tensors(self.lst(d.get("tensors"), "tensors"), partitions)
        meta = self.obj(d.get("metadata", {}), "metadata")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            raise self.fail("metadata must map strings to strings")
        return CheckpointLayout(
            path=self.root,
            version=(major, minor),
            chunk_size=chunk,
            partitions=partitions,
            tensors=tensors,
            aliases=aliases,
            order=order,
            files=files,
            metadata=dict(meta),
            index_bytes=self.nbytes,
        )

    def plain_name(self, v: object, what: str) -> str:
        # Names starting with a dot are reserved for tools (staging, markers, seals).
        if (
            not isinstance(v, str)
            or not _PLAIN_NAME.fullmatch(v)
            or v.startswith(".")
            or (v == INDEX_FILE)
        ):
            raise self.fail(f"{what} {v!r} is not a plain file name")
        return v

    def partition(self, v: object, i: int, chunk: int) -> PartitionInfo:
        p = self.obj(v, f"partitions[{i}]")
        name = self.plain_name(p.get("file"), f"partitions[{i}].file")
        size = self.int_(p.get("size"), f"partitions[{i}].size")
        if size % ALIGNMENT:
            raise self.fail(
                f"partitions[{i}].size {size} is not aligned (a multiple of {ALIGNMENT})",
                path=self.root / name,
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

    def file(self, v: object, i: int) -> FileInfo:
        f = self.obj(v, f"files[{i}]")
        return FileInfo(
            name=self.plain_name(f.get("name"), f"files[{i}].name"),
            size=self.int_(f.get("size"), f"files[{i}].size"),
        )

    def tensors(
        self, entries: list[Any], partitions: tuple[PartitionInfo, ...]
    ) -> tuple[tuple[TensorEntry, ...], dict[str, str], tuple[str, ...]]:
        data: list[TensorEntry] = []
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
    ) -> TensorEntry:
        dname = e.get("dtype")
        itemsize = DTYPE_SIZES.get(dname) if isinstance(dname, str) else None
        if itemsize is None:
            raise self.fail(f"{name}: unknown dtype {dname!r}")
        assert isinstance(dname, str)
        shape_v = self.lst(e.get("shape"), f"{name}: shape")
        if len(shape_v) > MAX_DIMS:
            raise self.fail(f"{name}: more than {MAX_DIMS} dimensions")
        shape = tuple(self.int_(s, f"{name}: shape") for s in shape_v)
        nbytes = self.int_(e.get("nbytes"), f"{name}: nbytes")
        offset = self.int_(e.get("offset"), f"{name}: offset")
        if math.prod(shape) * itemsize != nbytes:
            raise self.fail(
                f"{name}: nbytes {nbytes} does not match shape {list(shape)} of {dname}"
            )
        part_v = e.get("partition")
        if part_v is None:
            if nbytes:
                raise self.fail(f"{name}: a tensor with bytes needs a partition")
            return TensorEntry(name, dname, shape, None, 0, 0)
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
        return TensorEntry(name, dname, shape, part, offset, nbytes)

    def check_overlaps(
        self, data: list[TensorEntry], partitions: tuple[PartitionInfo, ...]
    ) -> None:
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
