"""Round trips: every dtype and layout, through every load path, agree with the reference reader."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from libs.loader import INDEX_FILE, LoadStats, _native, load_checkpoint, read_index, save_checkpoint
from libs.loader.dtypes import DTYPES
from libs.loader.probe import TMPFS_MAGIC
from libs.loader.reference import reference_load

from .helpers import CHUNK, evict, make_state, same_bytes

pytestmark = pytest.mark.unit


def every_dtype() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    out = {}
    for i, (name, dt) in enumerate(sorted(DTYPES.items())):
        shape = (3, 5, 2) if i % 2 else (7,)
        raw = torch.randint(
            0, 256, (torch.Size(shape).numel() * dt.itemsize,), dtype=torch.uint8, generator=g
        )
        if dt == torch.bool:
            raw = raw % 2  # only 0 and 1 are valid bools
        out[name] = raw.view(dt).reshape(shape)
    return out


@pytest.mark.parametrize("zero_copy", [False, True])
def test_every_dtype_round_trips_bit_exact(tmp_path: Path, zero_copy: bool) -> None:
    state = every_dtype()
    assert {
        "bfloat16",
        "float8_e4m3fn",
        "float8_e5m2",
        "float8_e4m3fnuz",
        "float8_e5m2fnuz",
        "bool",
    } <= state.keys()
    assert {"complex64", "complex128", "uint16", "uint32", "uint64"} <= state.keys()
    path = save_checkpoint(state, tmp_path / "c", chunk_size=CHUNK)
    loaded = load_checkpoint(path, zero_copy=zero_copy)
    assert list(loaded) == list(state)
    for name, t in state.items():
        assert same_bytes(loaded[name], t), name


def test_odd_shapes_scalars_zero_size_and_non_contiguous(tmp_path: Path) -> None:
    state = make_state()
    state.update(
        {
            "zero_mid": torch.empty(4, 0, 3, dtype=torch.float16),
            "zero_1d": torch.empty(0, dtype=torch.int8),
            "prime": torch.randn(1, 4099),
            "expanded": torch.arange(4.0).expand(3, 4),
            "sliced": torch.randn(10, 10)[2:7, 3:9],
            "permuted": torch.randn(2, 3, 4).permute(2, 0, 1),
        }
    )
    path = save_checkpoint(state, tmp_path / "c", chunk_size=CHUNK)
    loaded = load_checkpoint(path)
    for name, t in state.items():
        assert same_bytes(loaded[name], t), name
        assert loaded[name].is_contiguous()


def test_tied_weights_are_stored_once_and_loaded_as_one_tensor(ckpt: Path) -> None:
    index = read_index(ckpt)
    assert index.aliases == {"head.weight": "embed.weight"}
    assert "head.weight" not in {t.name for t in index.tensors}
    loaded = load_checkpoint(ckpt)
    assert loaded["head.weight"] is loaded["embed.weight"]


def test_tied_weights_of_a_module_are_stored_once(tmp_path: Path) -> None:
    emb = torch.nn.Embedding(50, 8)
    head = torch.nn.Linear(8, 50, bias=False)
    head.weight = emb.weight
    model = torch.nn.ModuleDict({"emb": emb, "head": head})
    index = read_index(save_checkpoint(model, tmp_path / "m"))
    assert index.aliases == {"head.weight": "emb.weight"}


def test_tensors_are_views_into_one_buffer(ckpt: Path) -> None:
    loaded = load_checkpoint(ckpt, zero_copy=False)
    storages = {t.untyped_storage().data_ptr() for t in loaded.values() if t.numel()}
    assert len(storages) == 1
    assert all(t.data_ptr() % 4096 == 0 for t in loaded.values() if t.numel())


@pytest.mark.parametrize("mode", ["read", "mmap"])
def test_native_engine_agrees_with_reference_reader(ckpt: Path, mode: str) -> None:
    stats = LoadStats()
    native = load_checkpoint(ckpt, zero_copy=mode == "mmap", stats=stats)
    ref = reference_load(ckpt)
    assert stats.mode == mode
    assert list(native) == list(ref)
    for name in ref:
        assert same_bytes(native[name], ref[name]), name


def test_partitions_are_bounded_aligned_and_padded(tmp_path: Path) -> None:
    state = {f"t{i}": torch.randn(10_000) for i in range(10)}  # 40 KB each
    state["huge"] = torch.randn(100_000)  # bigger than a partition on its own
    path = save_checkpoint(state, tmp_path / "c", partition_size=100_000, chunk_size=CHUNK)
    index = read_index(path)
    for i, p in enumerate(index.partitions):
        assert p.size % 4096 == 0
        assert index.partition_path(i).stat().st_size == p.size
        members = [t for t in index.tensors if t.partition == i]
        assert p.size <= 100_000 + 4095 or len(members) == 1
    assert same_bytes(load_checkpoint(path)["huge"], state["huge"])


def test_empty_and_all_zero_size_checkpoints_load(tmp_path: Path) -> None:
    assert load_checkpoint(save_checkpoint({}, tmp_path / "a")) == {}
    loaded = load_checkpoint(save_checkpoint({"e": torch.empty(0, 2)}, tmp_path / "b"))
    assert loaded["e"].shape == (0, 2)


def test_model_files_travel_with_the_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0"}')
    path = save_checkpoint(
        {"w": torch.ones(2)},
        tmp_path / "c",
        extra_files={"tokenizer.json": tmp_path / "tokenizer.json"},
    )
    assert (path / "tokenizer.json").read_text() == '{"version": "1.0"}'
    doc = json.loads((path / INDEX_FILE).read_text())
    assert doc["files"] == [{"name": "tokenizer.json", "size": 18}]


def test_writing_is_atomic_and_cleans_up_on_failure(tmp_path: Path) -> None:
    bad = {"ok": torch.ones(3), "bad": torch.empty(2, device="meta")}
    with pytest.raises(ValueError, match="dense"):
        save_checkpoint(bad, tmp_path / "c")
    assert list(tmp_path.iterdir()) == []

    def failing_progress(done: int, total: int) -> None:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint({"w": torch.ones(10)}, tmp_path / "c", progress=failing_progress)
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_atomically_and_refuses_without_flag(tmp_path: Path) -> None:
    path = save_checkpoint({"w": torch.ones(3)}, tmp_path / "c")
    with pytest.raises(FileExistsError):
        save_checkpoint({"w": torch.zeros(3)}, path)
    save_checkpoint({"w": torch.zeros(3)}, path, overwrite=True)
    assert torch.equal(load_checkpoint(path)["w"], torch.zeros(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_writer_progress_reaches_total(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    save_checkpoint(make_state(), tmp_path / "c", progress=lambda d, t: calls.append((d, t)))
    assert calls[-1][0] == calls[-1][1] > 0
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(calls))


def test_cold_read_uses_o_direct_on_ext4(ckpt: Path, state: dict[str, torch.Tensor]) -> None:
    if _native.fs_magic(str(ckpt)) == TMPFS_MAGIC:
        pytest.skip("the temporary directory is on tmpfs, which has no cold tier")
    evict(ckpt)
    stats = LoadStats()
    loaded = load_checkpoint(ckpt, stats=stats)
    assert (stats.tier, stats.mode) == ("disk", "read")
    assert stats.o_direct
    assert stats.direct_bytes == stats.bytes
    assert same_bytes(loaded["big"], state["big"])


def test_page_cache_resident_checkpoint_is_mapped(ckpt: Path) -> None:
    reference_load(ckpt)  # reads every partition into the page cache
    stats = LoadStats()
    load_checkpoint(ckpt, stats=stats)
    assert (stats.tier, stats.mode, stats.o_direct) == ("page_cache", "mmap", False)
