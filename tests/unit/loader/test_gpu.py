"""The CUDA path: staging ring, one device allocation per device, device maps (needs a GPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from libs.loader import CancelToken, HostPool, LoadCancelled, LoadStats, load_checkpoint
from libs.loader.reference import reference_load

from .helpers import evict, same_bytes

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="CUDA is not available on this machine"
    ),
]


def assert_matches_reference(loaded: dict[str, torch.Tensor], ckpt: Path) -> None:
    ref = reference_load(ckpt)
    assert list(loaded) == list(ref)
    for name, t in ref.items():
        assert same_bytes(loaded[name].cpu(), t), name


@pytest.mark.parametrize("cold", [False, True])
def test_cuda_load_is_one_device_buffer_of_views(ckpt: Path, cold: bool) -> None:
    if cold:
        evict(ckpt)
    stats = LoadStats()
    loaded = load_checkpoint(ckpt, "cuda:0", stats=stats)
    assert stats.mode == "staged"
    assert stats.devices == ["cuda:0"]
    assert all(t.device == torch.device("cuda", 0) for t in loaded.values())
    assert len({t.untyped_storage().data_ptr() for t in loaded.values() if t.numel()}) == 1
    assert all(t.data_ptr() % 256 == 0 for t in loaded.values() if t.numel())
    assert loaded["head.weight"] is loaded["embed.weight"]
    assert_matches_reference(loaded, ckpt)
    if cold:
        assert stats.o_direct


def test_cuda_load_through_a_pinned_pool(ckpt: Path) -> None:
    with HostPool(64 << 20) as pool:
        assert pool.pinned
        for _ in range(3):
            loaded = load_checkpoint(ckpt, "cuda", pool=pool)
            assert_matches_reference(loaded, ckpt)
            assert pool.used == 0  # the staging ring went back after the load


def test_device_map_splits_tensors_between_gpu_and_cpu(ckpt: Path) -> None:
    stats = LoadStats()
    loaded = load_checkpoint(ckpt, {"": "cuda:0", "big": "cpu"}, stats=stats)
    assert loaded["big"].device.type == "cpu"
    assert loaded["odd"].device == torch.device("cuda", 0)
    assert sorted(stats.devices) == ["cpu", "cuda:0"]
    assert_matches_reference(loaded, ckpt)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_device_map_across_two_gpus(ckpt: Path) -> None:
    loaded = load_checkpoint(ckpt, {"": "cuda:0", "embed": "cuda:1"})
    assert loaded["embed.weight"].device == torch.device("cuda", 1)
    assert_matches_reference(loaded, ckpt)


def test_cuda_load_cancel_frees_device_memory(ckpt: Path) -> None:
    token = CancelToken()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    with pytest.raises(LoadCancelled):
        load_checkpoint(ckpt, "cuda:0", progress=lambda d, t: token.cancel(), cancel=token)
    import gc

    gc.collect()
    assert torch.cuda.memory_allocated() == before


def test_load_model_on_cuda_generates_like_from_pretrained(tmp_path: Path) -> None:
    from libs.loader import convert_hf, load_model

    from .test_model import hf, tiny_llama

    tiny_llama(tmp_path / "hf", tie=True)
    ckpt = convert_hf(tmp_path / "hf", tmp_path / "sllm")
    ref = hf().AutoModelForCausalLM.from_pretrained(tmp_path / "hf").to("cuda:0")
    model = load_model(ckpt, "cuda:0")
    ids = torch.tensor([[3, 17, 42, 99, 5]], device="cuda:0")
    assert torch.equal(
        ref.generate(ids, max_new_tokens=12, do_sample=False),
        model.generate(ids, max_new_tokens=12, do_sample=False),
    )
