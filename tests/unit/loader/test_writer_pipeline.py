"""The pipelined writer: a reader thread fills and hashes reusable blocks while the caller's
thread writes them (O_DIRECT where the file system allows). Its output must be byte for byte what
the previous, sequential writer produced, and every failure must leave nothing behind."""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import libs.loader.writer as writer
from libs.loader import convert_hf, load_checkpoint, read_index, save_checkpoint
from libs.loader.sources import Entry, FileRangeSource, Sink

from .helpers import arith_bytes, digest, same_bytes, write_hf_model

pytestmark = pytest.mark.unit

# Digests of the checkpoints the previous (sequential, buffered) writer made of the same inputs.
CONVERT_DIGESTS = {
    (40_000, 8192): "9c123b0335b2da332a98188431ce46cfb2af01b1caa15093f9235803da9a5f54",
    (1 << 30, 4 << 20): "35eda39498983c56ad4abde514296217d62822d3cdc275345972b6b8a6acdedd",
}
SAVE_DIGEST = "dde35696fec53025dadfa08a2e0730021fa30d02aa248ddfc0eb4ae2a5c14e84"
# Blocks of one page, of three (tensors and chunks straddle blocks), and the default.
BLOCK_SIZES = [4096, 3 * 4096, writer._BLOCK_SIZE]


def _writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "sllm-write-reader"]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_hf_model(tmp_path_factory.mktemp("pipeline") / "hf")


@pytest.fixture(params=BLOCK_SIZES, ids=lambda b: f"block{b}")
def block_size(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.setattr(writer, "_BLOCK_SIZE", request.param)
    yield request.param
    assert not _writer_threads()


@pytest.mark.parametrize(("partition_size", "chunk_size"), list(CONVERT_DIGESTS))
def test_convert_is_byte_identical_to_the_previous_writer(
    hf_dir: Path, tmp_path: Path, block_size: int, partition_size: int, chunk_size: int
) -> None:
    out = convert_hf(hf_dir, tmp_path / "out", partition_size=partition_size, chunk_size=chunk_size)
    assert digest(out) == CONVERT_DIGESTS[(partition_size, chunk_size)]
    if partition_size < 1 << 20:
        assert len(read_index(out).partitions) == 4


def test_save_checkpoint_is_byte_identical_to_the_previous_writer(
    tmp_path: Path, block_size: int
) -> None:
    base = arith_bytes(33 * 17 * 4, 1).view(torch.float32).reshape(33, 17)
    state = {
        "embed": base,
        "t": arith_bytes(9 * 11 * 2, 2).view(torch.bfloat16).reshape(9, 11).t(),
        "strided": arith_bytes(200 * 8, 3).view(torch.int64)[::3],
        "empty": torch.empty(0, 4),
        "scalar": arith_bytes(8, 5).view(torch.float64).reshape(()),
        "big": arith_bytes(300 * 301 * 4, 4).view(torch.float32).reshape(300, 301),
        "head": base,
    }
    out = save_checkpoint(state, tmp_path / "c", partition_size=200_000, chunk_size=8192)
    assert digest(out) == SAVE_DIGEST
    loaded = load_checkpoint(out)
    assert all(same_bytes(loaded[k], v) for k, v in state.items())


def test_progress_only_goes_up_and_ends_at_the_total(
    hf_dir: Path, tmp_path: Path, block_size: int
) -> None:
    calls: list[tuple[int, int]] = []
    out = convert_hf(
        hf_dir,
        tmp_path / "out",
        partition_size=40_000,
        chunk_size=8192,
        progress=lambda d, t: calls.append((d, t)),
    )
    index = read_index(out)
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(calls))
    assert calls[-1] == (index.tensor_bytes, index.tensor_bytes)


@pytest.mark.parametrize("fail_at", [1, 3])
def test_a_raising_progress_aborts_and_leaves_nothing(
    hf_dir: Path, tmp_path: Path, block_size: int, fail_at: int
) -> None:
    """How storage cancels a conversion: its progress callback raises."""
    calls = 0

    def progress(done: int, total: int) -> None:
        nonlocal calls
        calls += 1
        if calls == fail_at:
            raise KeyboardInterrupt if fail_at == 3 else RuntimeError("cancelled")

    fds = _open_fds()
    dst = tmp_path / "dst"
    dst.mkdir()
    with pytest.raises((RuntimeError, KeyboardInterrupt)):
        convert_hf(hf_dir, dst / "ckpt", partition_size=40_000, chunk_size=8192, progress=progress)
    assert list(dst.iterdir()) == []
    assert not _writer_threads()
    assert _open_fds() == fds


class _Stalled:
    """A source that hangs until released, like a read from a stalled network disk."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.release = threading.Event()

    def write_to(self, sink: Sink) -> None:
        while not self.release.wait(0.01):
            pass
        space = sink.reserve()
        space[:1] = b"x"
        sink.commit(1)


def test_a_stalled_source_can_still_be_cancelled_through_progress(tmp_path: Path) -> None:
    source = _Stalled(4)
    calls: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        calls.append((done, total))
        source.release.set()  # lets the reader thread notice the stop and end
        raise RuntimeError("cancelled")

    entry = Entry("w", torch.float32, (1,), source=source)
    with pytest.raises(RuntimeError, match="cancelled"):
        writer.write_checkpoint([entry], tmp_path / "c", progress=progress)
    assert calls == [(0, 4)]  # called while waiting, before any data arrived
    assert list(tmp_path.iterdir()) == []
    assert not _writer_threads()


def test_reader_errors_reach_the_caller_with_their_type(tmp_path: Path) -> None:
    data = tmp_path / "data.bin"
    data.write_bytes(bytes(100))
    past_end = Entry("w", torch.float32, (50,), source=FileRangeSource(data, 0, 200))
    with pytest.raises(EOFError, match="ends inside a tensor"):
        writer.write_checkpoint([past_end], tmp_path / "c")
    short = Entry("w", torch.float32, (50,), source=FileRangeSource(data, 0, 100))
    with pytest.raises(ValueError, match="source gave 100 bytes, expected 200"):
        writer.write_checkpoint([short], tmp_path / "c")
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]
    assert not _writer_threads()


def test_an_unaligned_write_falls_back_to_the_page_cache(tmp_path: Path) -> None:
    """A file system that wants another alignment than O_DIRECT's writes gets buffered ones."""
    w = writer._PartitionWriter(tmp_path / "p.bin")
    try:
        w.write(memoryview(b"abc"))  # not a multiple of the block size: EINVAL under O_DIRECT
        w.write(memoryview(bytes(4093)))
    finally:
        w.abort()
    assert (tmp_path / "p.bin").read_bytes() == b"abc" + bytes(4093)
    assert w.pos == 4096


def test_empty_checkpoints_start_no_reader(tmp_path: Path) -> None:
    started = threading.active_count()
    out = save_checkpoint({"e": torch.empty(0)}, tmp_path / "c")
    assert read_index(out).partitions == ()
    assert threading.active_count() == started
