"""The one-pass, multi-threaded partition writer: same bytes and hashes whatever the threads,
chunk and piece sizes; corrupt sources and failed progress callbacks leave nothing behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import xxhash

import libs.loader.partition_writer as pw
from libs.loader import ConversionError, convert_hf, save_checkpoint
from libs.loader.convert import _safetensors_entries
from libs.loader.index import read_index
from libs.loader.reference import reference_load
from libs.loader.sources import FileRangeSource, TensorSource
from libs.loader.writer import write_checkpoint

from .helpers import CHUNK, make_state, same_bytes, write_hf_model


def _partition_bytes(path: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(path.glob("part-*.bin"))}


def _hashes_match_files(path: Path) -> None:
    index = read_index(path)
    for i, part in enumerate(index.partitions):
        raw = index.partition_path(i).read_bytes()
        assert len(raw) == part.size
        got = [
            xxhash.xxh3_64_intdigest(raw[k : k + index.chunk_size])
            for k in range(0, part.size, index.chunk_size)
        ]
        assert tuple(got) == part.chunks


@pytest.mark.parametrize("threads", [1, 3, 8])
def test_conversion_is_identical_for_any_thread_count_and_matches_its_index(
    tmp_path: Path, threads: int
) -> None:
    src = write_hf_model(tmp_path / "hf")
    one = convert_hf(src, tmp_path / "one", partition_size=40_000, chunk_size=CHUNK)
    many = tmp_path / "many"
    entries = _safetensors_entries(sorted(src.glob("*.safetensors")))
    write_checkpoint(entries, many, partition_size=40_000, chunk_size=CHUNK, threads=threads)
    assert len(_partition_bytes(one)) > 2
    assert _partition_bytes(one) == _partition_bytes(many)
    _hashes_match_files(many)
    a, b = (
        json.loads((one / "sllm-index.json").read_text()),
        json.loads((many / "sllm-index.json").read_text()),
    )
    assert a["partitions"] == b["partitions"]
    assert a["tensors"] == b["tensors"]


def test_chunks_larger_than_a_piece_are_hashed_piece_by_piece(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = make_state()
    save_checkpoint(state, tmp_path / "whole", chunk_size=4 * CHUNK)
    monkeypatch.setattr(pw, "_PIECE", CHUNK // 2)  # eight pieces per hash chunk
    save_checkpoint(state, tmp_path / "pieces", chunk_size=4 * CHUNK)
    assert _partition_bytes(tmp_path / "whole") == _partition_bytes(tmp_path / "pieces")
    assert read_index(tmp_path / "whole").partitions == read_index(tmp_path / "pieces").partitions
    loaded = reference_load(tmp_path / "pieces")
    for name, t in state.items():
        assert same_bytes(loaded[name], t.contiguous()), name


def test_padding_between_tensors_is_zero(tmp_path: Path) -> None:
    state = {
        "a": torch.full((5,), -1, dtype=torch.int8),
        "b": torch.full((7,), -1, dtype=torch.int8),
    }
    save_checkpoint(state, tmp_path / "c", chunk_size=CHUNK)
    raw = (tmp_path / "c" / "part-00000.bin").read_bytes()
    assert len(raw) == 8192
    assert raw[:5] == b"\xff" * 5
    assert raw[5:4096] == bytes(4091)
    assert raw[4096:4103] == b"\xff" * 7
    assert raw[4103:] == bytes(8192 - 4103)


def test_a_safetensors_file_shorter_than_its_header_says_is_refused(tmp_path: Path) -> None:
    src = write_hf_model(tmp_path / "hf")
    shard = sorted(src.glob("*.safetensors"))[1]
    os.truncate(shard, shard.stat().st_size - 100)
    with pytest.raises(ConversionError, match="data offsets"):
        convert_hf(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]


def test_a_source_that_shrinks_while_read_is_an_error_not_a_short_copy(tmp_path: Path) -> None:
    f = tmp_path / "blob"
    f.write_bytes(bytes(range(256)) * 64)
    src = FileRangeSource(f, 100, 10_000)
    out = memoryview(bytearray(300))
    src.read_into(50, out)
    assert bytes(out) == (bytes(range(256)) * 64)[150:450]
    os.truncate(f, 5_000)
    with pytest.raises(ConversionError, match="ends inside a tensor") as info:
        src.read_into(4_000, memoryview(bytearray(2_000)))
    assert info.value.offset == 5_000


def test_tensor_source_serves_ranges_and_releases_its_copy(tmp_path: Path) -> None:
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()  # non-contiguous
    src = TensorSource(t)
    flat = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    first, second = memoryview(bytearray(20)), memoryview(bytearray(28))
    src.read_into(0, first)
    assert src._flat is not None
    src.read_into(20, second)
    assert bytes(first) + bytes(second) == flat
    assert src._flat is None
    with pytest.raises(ValueError, match="past the tensor"):
        TensorSource(t).read_into(40, memoryview(bytearray(9)))


def test_a_failing_progress_callback_stops_the_write_and_leaves_nothing(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        calls.append((done, total))
        if len(calls) == 3:
            raise KeyboardInterrupt  # what a cancel raises: not an Exception

    fds = len(os.listdir("/proc/self/fd"))
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(
            make_state(),
            tmp_path / "c",
            chunk_size=CHUNK,
            partition_size=1 << 16,
            progress=progress,
        )
    assert list(tmp_path.iterdir()) == []
    assert len(os.listdir("/proc/self/fd")) == fds
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)
