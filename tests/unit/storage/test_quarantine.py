"""Checking a reader's damage report before a copy is removed: the chunk it names, else all."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.storage.quarantine import confirm_damage
from services.storage.transfer import Meter

from .fake_checkpoint import flip_byte, write_fake_checkpoint

pytestmark = pytest.mark.unit

CHUNK = 64 << 10


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    return write_fake_checkpoint(tmp_path / "c", partitions=2, chunk_size=CHUNK)


def test_an_intact_copy_is_not_damaged_whatever_the_report_names(copy: Path) -> None:
    assert confirm_damage(copy, "part-00001.bin", 2 * CHUNK, Meter(0)) is None
    assert confirm_damage(copy, "", None, Meter(0)) is None
    assert confirm_damage(copy, "no-such-file", 0, Meter(0)) is None


def test_the_named_chunk_is_checked(copy: Path) -> None:
    flip_byte(copy / "part-00001.bin", 2 * CHUNK + 7)
    found = confirm_damage(copy, "part-00001.bin", 2 * CHUNK, Meter(0))
    assert found is not None
    assert "part-00001.bin" in found
    assert "XXH3-64" in found
    # Another chunk of that file is intact: a report that names it is not confirmed.
    assert confirm_damage(copy, "part-00001.bin", 0, Meter(0)) is None


def test_without_a_chunk_the_whole_copy_is_checked(copy: Path) -> None:
    flip_byte(copy / "part-00000.bin", 3 * CHUNK + 1)
    found = confirm_damage(copy, "", None, Meter(0))
    assert found is not None
    assert "part-00000.bin" in found


def test_missing_or_resized_files_and_a_bad_index_are_damage(copy: Path) -> None:
    with open(copy / "config.json", "ab") as f:
        f.write(b" ")
    assert "the index says" in (confirm_damage(copy, "", None, Meter(0)) or "")
    (copy / "part-00000.bin").unlink()
    assert "missing" in (confirm_damage(copy, "part-00000.bin", 0, Meter(0)) or "")
    (copy / "sllm-index.json").write_text("{")
    assert "JSON" in (confirm_damage(copy, "", None, Meter(0)) or "")
