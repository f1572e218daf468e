"""Blocking copy primitives: exact sizes, hash checks on the way, full disks, staging, scan."""

from __future__ import annotations

import errno
import io
import threading
from pathlib import Path

import pytest
import xxhash

from libs.protocol.errors import CancelledError, CorruptError, StorageFullError
from services.storage.checkpoint import Marker, parse_index
from services.storage.names import MARKER_FILE, checkpoint_dirname
from services.storage.probe import probe_read_bandwidth
from services.storage.scan import scan_tier
from services.storage.sources import copy_checkpoint, verify_checkpoint
from services.storage.transfer import Meter, Staging, copy_exact, storage_full

from .fake_checkpoint import flip_byte, write_fake_checkpoint

pytestmark = pytest.mark.unit

CHUNK = 16 << 10


def _data_and_hashes(n: int = 5 * CHUNK + 4096) -> tuple[bytes, list[int]]:
    data = bytes(range(256)) * (n // 256)
    return data, [xxhash.xxh3_64_intdigest(data[o : o + CHUNK]) for o in range(0, n, CHUNK)]


def test_copy_verifies_every_chunk_and_reports_progress(tmp_path: Path) -> None:
    data, hashes = _data_and_hashes()
    seen: list[tuple[int, int]] = []
    meter = Meter(total=len(data), progress=lambda d, t: seen.append((d, t)))
    copy_exact(
        io.BytesIO(data), tmp_path / "out", len(data), meter,
        what="x", tier="ssd", chunk_size=CHUNK, hashes=hashes,
    )  # fmt: skip
    assert (tmp_path / "out").read_bytes() == data
    assert seen[-1] == (len(data), len(data))
    assert meter.done == len(data)
    assert meter.read_s >= 0


def test_a_flipped_byte_is_found_with_its_chunk_and_offset(tmp_path: Path) -> None:
    data, hashes = _data_and_hashes()
    bad = bytearray(data)
    bad[3 * CHUNK + 7] ^= 1
    with pytest.raises(CorruptError, match=f"chunk 3 at byte {3 * CHUNK}"):
        copy_exact(
            io.BytesIO(bytes(bad)), tmp_path / "out", len(data), Meter(len(data)),
            what="x", tier="ssd", chunk_size=CHUNK, hashes=hashes,
        )  # fmt: skip


def test_a_short_source_is_corrupt(tmp_path: Path) -> None:
    with pytest.raises(CorruptError, match="ends at byte 100"):
        copy_exact(io.BytesIO(b"x" * 100), tmp_path / "o", 200, Meter(200), what="x", tier="ssd")


def test_a_full_disk_is_storage_full(tmp_path: Path) -> None:
    # /dev/full answers every write with ENOSPC: a full disk without root or a tiny mount.
    with pytest.raises(StorageFullError, match="ssd tier is full"):
        copy_exact(io.BytesIO(b"x" * 8192), "/dev/full", 8192, Meter(8192), what="x", tier="ssd")


def test_storage_full_looks_through_wrapping_errors() -> None:
    wrapped = RuntimeError("conversion failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert isinstance(storage_full(wrapped, "dram", "/x"), StorageFullError)
    assert storage_full(OSError(errno.EDQUOT, "quota"), "ssd", "/x") is not None
    assert storage_full(OSError(errno.EIO, "io"), "ssd", "/x") is None


def test_cancel_stops_a_copy(tmp_path: Path) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(CancelledError):
        copy_exact(io.BytesIO(b"x" * 8192), tmp_path / "o", 8192, Meter(8192, None, cancel),
                   what="x", tier="ssd")  # fmt: skip


def test_staging_commits_atomically_and_cleans_up_on_failure(tmp_path: Path) -> None:
    with Staging(tmp_path) as st:
        st.checkpoint.mkdir()
        (st.checkpoint / "f").write_text("new")
        (tmp_path / "dst").mkdir()
        (tmp_path / "dst" / "f").write_text("stale")
        st.commit(tmp_path / "dst")
    assert (tmp_path / "dst" / "f").read_text() == "new"
    with pytest.raises(RuntimeError), Staging(tmp_path) as st:
        st.checkpoint.mkdir()
        (st.checkpoint / "half-written").write_text("x")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst"]


def test_copy_checkpoint_then_verify_and_detect_rot(tmp_path: Path) -> None:
    src = write_fake_checkpoint(tmp_path / "src", partitions=2, chunk_size=CHUNK)
    raw = (src / "sllm-index.json").read_bytes()
    files = parse_index(raw)
    (tmp_path / "dst").mkdir()
    copy_checkpoint(
        src, files, raw, tmp_path / "dst", Meter(files.total_bytes), "dram", direct=True
    )
    verify_checkpoint(tmp_path / "dst", files, Meter(files.total_bytes))
    flip_byte(tmp_path / "dst" / "part-00001.bin", 5)
    with pytest.raises(CorruptError, match=r"part-00001\.bin: chunk 0"):
        verify_checkpoint(tmp_path / "dst", files, Meter(files.total_bytes))


def _ours(root: Path, model: str, seed: int) -> Path:
    path = write_fake_checkpoint(root / checkpoint_dirname(model), seed=seed)
    (path / MARKER_FILE).write_bytes(Marker(model, f"file:///{model}").dump())
    return path


def test_scan_keeps_ours_drops_damage_and_leftovers_and_ignores_foreign(tmp_path: Path) -> None:
    good = _ours(tmp_path, "org/good", 1)
    damaged = _ours(tmp_path, "org/damaged", 2)
    (damaged / "part-00000.bin").write_bytes(b"short")
    (tmp_path / ".sllm-tmp-123" / "checkpoint").mkdir(parents=True)
    (tmp_path / ".sllm-trash-456").mkdir()
    (tmp_path / "someone-elses-dir").mkdir()
    found = scan_tier(tmp_path)
    assert [(f.model, f.path) for f in found] == [("org/good", good)]
    assert found[0].bytes == sum(p.stat().st_size for p in good.iterdir() if p.name != MARKER_FILE)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([good.name, "someone-elses-dir"])


def test_probe_measures_and_leaves_nothing(tmp_path: Path) -> None:
    bps = probe_read_bandwidth(tmp_path, 1 << 20, threading.Event())
    assert bps is not None
    assert bps > 0
    assert list(tmp_path.iterdir()) == []
    cancel = threading.Event()
    cancel.set()
    assert probe_read_bandwidth(tmp_path, 1 << 20, cancel) is None
    assert list(tmp_path.iterdir()) == []
