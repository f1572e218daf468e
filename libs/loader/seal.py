"""Seals: a verifier's record that a checkpoint's tmpfs partitions matched their chunk hashes.

A partition in tmpfs lives only in RAM: once its chunks matched the index, its bytes change only
through a write (or a truncation), and every write moves the file's mtime and ctime (which no
process can set back). The storage service hashes every chunk as it copies a checkpoint into the
DRAM tier, then writes the identity of each partition file it verified, (device, inode, size,
mtime, ctime, digest of the index's hashes), into `SEAL_FILE` next to them. A loader in any
process hashes only the partitions whose identity differs from the sealed one: a copy written
once and never touched loads without hashing, a changed one is verified at load. Files on disk
never qualify: the page cache may drop their pages and read them back from a disk that has
rotted since. Torch-free: the storage service writes seals.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

import xxhash

from .format import PartitionInfo

__all__ = ["SEAL_FILE", "FileKey", "file_key", "read_seal", "write_seal"]

SEAL_FILE = ".sllm-verified.json"
_SEAL_VERSION = 1
_MAX_SEAL_BYTES = 4 << 20

# (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns, digest of the partition's chunk hashes)
FileKey = tuple[int, int, int, int, int, int]


def chunks_digest(part: PartitionInfo) -> int:
    """XXH3-64 of a partition's chunk hashes: binds a verification to the index it used."""
    return int(xxhash.xxh3_64_intdigest(struct.pack(f"<{len(part.chunks)}Q", *part.chunks)))


def file_key(path: Path, part: PartitionInfo) -> FileKey | None:
    """The identity of a partition file's current content, or None if it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, chunks_digest(part))


def write_seal(directory: Path, partitions: Sequence[PartitionInfo]) -> None:
    """Seal the partitions of ``directory`` as they are now. Only for a caller that has just
    verified every chunk of them (and will not write to them again)."""
    keys = {}
    for part in partitions:
        key = file_key(directory / part.file, part)
        if key is None:
            raise FileNotFoundError(directory / part.file)
        keys[part.file] = list(key)
    tmp = directory / f"{SEAL_FILE}.tmp"
    with open(tmp, "w") as f:
        json.dump({"version": _SEAL_VERSION, "partitions": keys}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / SEAL_FILE)


def read_seal(directory: Path) -> Mapping[str, FileKey]:
    """The sealed identities by partition file name; empty when there is no usable seal (a
    missing or damaged seal only means hashing at load)."""
    try:
        with open(directory / SEAL_FILE, "rb") as f:
            doc = json.loads(f.read(_MAX_SEAL_BYTES))
        if not isinstance(doc, dict) or doc.get("version") != _SEAL_VERSION:
            return {}
        out: dict[str, FileKey] = {}
        for name, key in doc["partitions"].items():
            if (
                isinstance(name, str)
                and isinstance(key, list)
                and len(key) == 6
                and all(isinstance(v, int) and not isinstance(v, bool) for v in key)
            ):
                out[name] = (key[0], key[1], key[2], key[3], key[4], key[5])
        return out
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return {}
