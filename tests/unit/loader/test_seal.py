"""Seals: a tmpfs copy its verifier sealed loads without hashing while it stays unchanged; any
write (a flipped byte) or another index makes the load hash it again and find the damage."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from libs.loader import ChecksumMismatch, LoadStats, PartitionInfo, load_checkpoint, read_index
from libs.loader.seal import SEAL_FILE, read_seal, write_seal

from .helpers import CHUNK, same_bytes

pytestmark = pytest.mark.unit


def sealed_copy(ckpt: Path, where: Path) -> Path:
    """What the storage service does: copy (verifying), then seal the partitions."""
    copy = Path(shutil.copytree(ckpt, where / "ckpt"))
    load_checkpoint(copy, zero_copy=False)  # the verification (a read, so nothing is cached)
    write_seal(copy, read_index(copy).partitions)
    return copy


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b ^ 0x01]))


def load(path: Path) -> tuple[dict[str, torch.Tensor], LoadStats]:
    stats = LoadStats()
    return load_checkpoint(path, verify=True, prefault=False, stats=stats), stats


def test_a_sealed_tmpfs_copy_loads_without_hashing_and_right(
    ckpt: Path, shm_dir: Path, state: dict[str, torch.Tensor]
) -> None:
    copy = sealed_copy(ckpt, shm_dir)
    out, stats = load(copy)
    assert (stats.mode, stats.tier, stats.verified) == ("mmap", "tmpfs", True)
    assert stats.trusted_bytes == read_index(copy).total_bytes
    assert stats.threads == 0  # no engine work at all: the mapping is the load
    assert all(same_bytes(out[k], v) for k, v in state.items())


def test_a_byte_flipped_after_the_seal_is_found_at_the_next_load(ckpt: Path, shm_dir: Path) -> None:
    copy = sealed_copy(ckpt, shm_dir)
    part = read_index(copy).partitions[1]
    flip(copy / part.file, CHUNK + 5)  # a write moves mtime and ctime: the seal no longer holds
    with pytest.raises(ChecksumMismatch) as e:
        load(copy)
    assert (e.value.path, e.value.offset) == (str(copy / part.file), CHUNK)


def test_a_seal_binds_to_the_index_hashes_it_was_made_with(ckpt: Path, shm_dir: Path) -> None:
    copy = sealed_copy(ckpt, shm_dir)
    index = read_index(copy)
    other = [
        PartitionInfo(p.file, p.size, tuple(h ^ 1 for h in p.chunks)) for p in index.partitions
    ]
    write_seal(copy, other)  # sealed against other hashes: worth nothing for this index
    _, stats = load(copy)
    assert stats.trusted_bytes == 0


def test_a_seal_counts_only_on_tmpfs_and_a_damaged_seal_only_costs_a_hash(
    ckpt: Path, tmp_path: Path, shm_dir: Path
) -> None:
    (tmp_path / "disk").mkdir()
    on_disk = sealed_copy(ckpt, tmp_path / "disk")  # pages could come back from a rotten disk
    _, stats = load(on_disk)
    assert stats.trusted_bytes == 0

    copy = sealed_copy(ckpt, shm_dir)
    assert set(read_seal(copy)) == {p.file for p in read_index(copy).partitions}
    for garbage in (b"{", b'{"version": 1, "partitions": {"x": [1, 2]}}', b"[]", b"\xff", b""):
        (copy / SEAL_FILE).write_bytes(garbage)
        assert read_seal(copy) == {}
    _, stats = load(copy)  # (a load that hashes is remembered by this process: load once)
    assert stats.trusted_bytes == 0
    os.unlink(copy / SEAL_FILE)
    assert read_seal(copy) == {}
