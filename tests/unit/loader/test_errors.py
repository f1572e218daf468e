"""Bad files: each corruption raises its typed error naming file and offset; nothing survives."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from libs.loader import (
    ChecksumMismatch,
    HostPool,
    IndexCorrupt,
    LoadCancelled,
    PartitionMissing,
    PartitionTruncated,
    ReadError,
    load_checkpoint,
    read_index,
)
from libs.loader._engine import task_error
from libs.loader.reference import reference_load

from .helpers import CHUNK

pytestmark = pytest.mark.unit

MODES = [pytest.param(False, id="read"), pytest.param(True, id="mmap")]


@pytest.fixture(scope="module")
def pool() -> HostPool:
    return HostPool(8 << 20, pinned=False)


def first_partition(ckpt: Path) -> Path:
    return ckpt / read_index(ckpt).partitions[0].file


def largest_partition(ckpt: Path) -> Path:
    return ckpt / max(read_index(ckpt).partitions, key=lambda p: p.size).file


@pytest.mark.parametrize("zero_copy", MODES)
def test_flipped_byte_is_checksum_mismatch_at_its_chunk(
    ckpt: Path, zero_copy: bool, pool: HostPool
) -> None:
    part = largest_partition(ckpt)
    where = 3 * CHUNK + 123
    with open(part, "r+b") as f:
        f.seek(where)
        byte = f.read(1)
        f.seek(where)
        f.write(bytes([byte[0] ^ 0x40]))
    with pytest.raises(ChecksumMismatch) as e:
        load_checkpoint(ckpt, zero_copy=zero_copy, pool=pool)
    assert (e.value.path, e.value.offset) == (str(part), 3 * CHUNK)
    assert e.value.expected != e.value.actual
    assert str(part) in str(e.value)
    assert str(3 * CHUNK) in str(e.value)
    assert pool.used == 0  # the region went back: nothing partly loaded is kept
    with pytest.raises(ChecksumMismatch):
        reference_load(ckpt)


def test_corruption_loads_when_verification_is_off(ckpt: Path) -> None:
    with open(first_partition(ckpt), "r+b") as f:
        f.write(b"\xff")
    load_checkpoint(ckpt, verify=False)


@pytest.mark.parametrize("zero_copy", MODES)
def test_truncated_partition_names_file_and_end(ckpt: Path, zero_copy: bool) -> None:
    part = first_partition(ckpt)
    os.truncate(part, 5000)
    with pytest.raises(PartitionTruncated) as e:
        load_checkpoint(ckpt, zero_copy=zero_copy)
    assert (e.value.path, e.value.offset) == (str(part), 5000)


def test_longer_partition_than_index_says_is_index_corrupt(ckpt: Path) -> None:
    part = first_partition(ckpt)
    size = part.stat().st_size
    with open(part, "ab") as f:
        f.write(b"\0" * 4096)
    with pytest.raises(IndexCorrupt) as e:
        load_checkpoint(ckpt)
    assert (e.value.path, e.value.offset) == (str(part), size)


def test_missing_partition_is_partition_missing(ckpt: Path) -> None:
    part = first_partition(ckpt)
    part.unlink()
    with pytest.raises(PartitionMissing) as e:
        load_checkpoint(ckpt)
    assert e.value.path == str(part)


def test_engine_errors_map_to_typed_errors_with_file_and_offset(tmp_path: Path) -> None:
    paths = [tmp_path / "part-00000.bin"]
    missing = task_error((1, 0, 0, errno.ENOENT, 0, 0), paths)
    assert isinstance(missing, PartitionMissing)
    assert missing.path == str(paths[0])
    denied = task_error((1, 0, 0, errno.EACCES, 0, 0), paths)
    assert isinstance(denied, ReadError)
    assert denied.errno == errno.EACCES
    eio = task_error((3, 0, 8192, errno.EIO, 0, 0), paths)
    assert isinstance(eio, ReadError)
    assert (eio.offset, eio.errno) == (8192, errno.EIO)
    assert "Input/output error" in str(eio)
    short = task_error((2, 0, 4096, 0, 0, 0), paths)
    assert isinstance(short, PartitionTruncated)
    assert short.offset == 4096
    assert isinstance(task_error((5, 0, 0, 0, 0, 0), paths), LoadCancelled)


@pytest.mark.parametrize("zero_copy", MODES)
def test_unreadable_partition_is_read_error(ckpt: Path, zero_copy: bool) -> None:
    index = read_index(ckpt)
    # A directory of the declared size in place of a one-page partition: stat agrees, reads fail.
    part = ckpt / next(p.file for p in index.partitions if p.size == os.stat(ckpt).st_size)
    part.unlink()
    part.mkdir()
    with pytest.raises(ReadError) as e:
        load_checkpoint(ckpt, zero_copy=zero_copy)
    assert e.value.path == str(part)
    assert e.value.errno in (errno.EISDIR, errno.ENODEV, errno.EINVAL)
