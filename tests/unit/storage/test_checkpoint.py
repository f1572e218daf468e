"""The torch-free index reader: file names, sizes and hashes; the cheap start-up check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from libs.protocol.errors import CorruptError
from services.storage.checkpoint import Marker, parse_index, quick_check

from .fake_checkpoint import write_fake_checkpoint

pytestmark = pytest.mark.unit


def _index(path: Path) -> dict[str, object]:
    doc = json.loads((path / "sllm-index.json").read_text())
    assert isinstance(doc, dict)
    return doc


def test_parses_partitions_files_and_total_bytes(tmp_path: Path) -> None:
    ck = write_fake_checkpoint(tmp_path / "c", partitions=2, partition_bytes=8192, chunk_size=4096)
    raw = (ck / "sllm-index.json").read_bytes()
    files = parse_index(raw)
    assert [p.file for p in files.partitions] == ["part-00000.bin", "part-00001.bin"]
    assert [len(p.chunks) for p in files.partitions] == [2, 2]
    assert [f.name for f in files.files] == ["config.json"]
    on_disk = sum(f.stat().st_size for f in ck.iterdir())
    assert files.total_bytes == on_disk
    assert quick_check(ck) == files


@pytest.mark.parametrize(
    "bad_name", ["../evil", "a/b", "a\\b", ".hidden", "sllm-index.json", ".sllm-storage.json", ""]
)
def test_file_names_that_could_escape_or_collide_are_refused(tmp_path: Path, bad_name: str) -> None:
    ck = write_fake_checkpoint(tmp_path / "c")
    doc = _index(ck)
    doc["files"] = [{"name": bad_name, "size": 1}]
    with pytest.raises(CorruptError, match="plain file name"):
        parse_index(json.dumps(doc).encode())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("format", "other"),
        ("version", [2, 0]),
        ("chunk_size", 1000),
        ("chunk_size", True),
        ("partitions", {"file": "x"}),
    ],
)
def test_malformed_indexes_are_corrupt(tmp_path: Path, field: str, value: object) -> None:
    doc = _index(write_fake_checkpoint(tmp_path / "c"))
    doc[field] = value
    with pytest.raises(CorruptError):
        parse_index(json.dumps(doc).encode())


def test_wrong_hash_count_and_unaligned_sizes_are_corrupt(tmp_path: Path) -> None:
    doc = _index(write_fake_checkpoint(tmp_path / "c"))
    parts = doc["partitions"]
    assert isinstance(parts, list)
    parts[0]["chunks"] = parts[0]["chunks"][:-1]
    with pytest.raises(CorruptError, match="hashes"):
        parse_index(json.dumps(doc).encode())
    parts[0]["size"] = 4097
    with pytest.raises(CorruptError, match="aligned"):
        parse_index(json.dumps(doc).encode())
    with pytest.raises(CorruptError, match="JSON"):
        parse_index(b"{not json")


def test_quick_check_catches_truncated_and_missing_files(tmp_path: Path) -> None:
    ck = write_fake_checkpoint(tmp_path / "c")
    with open(ck / "part-00000.bin", "r+b") as f:
        f.truncate(4096)
    with pytest.raises(CorruptError, match="4096 bytes"):
        quick_check(ck)
    (ck / "part-00000.bin").unlink()
    with pytest.raises(CorruptError, match="missing"):
        quick_check(ck)
    (ck / "sllm-index.json").unlink()
    with pytest.raises(CorruptError, match=r"no sllm-index\.json"):
        quick_check(ck)


def test_marker_roundtrip_and_damage(tmp_path: Path) -> None:
    (tmp_path / ".sllm-storage.json").write_bytes(Marker("org/m:1", "file:///m").dump())
    assert Marker.load(tmp_path) == Marker("org/m:1", "file:///m")
    (tmp_path / ".sllm-storage.json").write_text("{}")
    with pytest.raises(CorruptError):
        Marker.load(tmp_path)
