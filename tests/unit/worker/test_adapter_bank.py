"""The worker's resident adapters: fetched once (concurrent first requests share the fetch),
least recently used out beyond the capacity, a bad adapter refused with a 400, and an evicted
adapter still held by a running job keeps working."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest

from libs.protocol.errors import BadRequestError, UnavailableError
from libs.protocol.messages import EnsureReply
from services.worker.adapters import AdapterBank
from services.worker.batch_policy import Limits
from services.worker.engine import Engine, Job
from services.worker.fetch import NodeStorage
from services.worker.sampling import Sampling

from .engine_jobs import collect

pytestmark = pytest.mark.unit


class Storage(NodeStorage):
    """Converts each adapter once (as the storage service would) and counts the ensures."""

    def __init__(self, root: Path, sources: dict[str, Path]) -> None:
        super().__init__(bus=None, node_id="n", worker_id="w", timeout=5.0)  # type: ignore[arg-type]
        self.root = root
        self.sources = sources
        self.ensures: list[tuple[str, str]] = []

    async def ensure(self, model: str, checkpoint_uri: str, tier: str = "ssd") -> EnsureReply:
        from libs.loader import convert_hf

        self.ensures.append((model, tier))
        await asyncio.sleep(0.01)  # a real round trip: concurrent callers overlap
        dst = self.root / model
        if not dst.exists():
            convert_hf(self.sources[model], dst)
        return EnsureReply(
            model=model, path=str(dst), tier="dram", source_tier="dram", bytes=1, seconds=0.01
        )


@pytest.fixture(scope="module")
def adapters(
    tiny_dirs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    from libs.demo.adapters import write_random_lora

    root = tmp_path_factory.mktemp("bank-adapters")
    out = {
        f"l{i}": write_random_lora(tiny_dirs[0], root / f"l{i}", r=2 + i, seed=i) for i in range(3)
    }
    bad = root / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text(
        '{"peft_type": "LORA", "r": 4, "use_dora": true, "target_modules": ["q_proj"]}'
    )
    shutil.copy(out["l0"] / "adapter_model.safetensors", bad / "adapter_model.safetensors")
    out["bad"] = bad
    return out


@pytest.fixture
def model(tiny_dirs: tuple[Path, Path]) -> Any:
    from libs.loader import load_model

    return load_model(tiny_dirs[1], device="cpu")  # its own: the bank hooks its modules


async def test_concurrent_first_requests_share_one_fetch_and_lru_evicts(
    model: Any, adapters: dict[str, Path], tmp_path: Path
) -> None:
    storage = Storage(tmp_path, adapters)
    changes: list[list[str]] = []
    bank = AdapterBank(model, lambda: storage, capacity=2, on_change=changes.append)
    first = await asyncio.gather(*(bank.get("l0", "file:///l0") for _ in range(5)))
    assert len({id(a) for a in first}) == 1
    assert storage.ensures == [("l0", "dram")]
    evicted = await bank.get("l1", "file:///l1")
    await bank.get("l0", "file:///l0")  # l0 is now the most recently used
    held = await bank.get("l2", "file:///l2")
    assert bank.resident == ["l0", "l2"]  # l1 went
    assert changes[-1] == ["l0", "l2"]
    assert bank.evictions == 1
    again = await bank.get("l1", "file:///l1")  # reloaded from the node's copy
    assert bank.resident == ["l2", "l1"]
    assert [m for m, _ in storage.ensures] == ["l0", "l1", "l2", "l1"]
    assert again is not evicted
    assert again.name == "l1"
    assert held.name == "l2"
    assert [load.name for load in bank.loads] == ["l0", "l1", "l2", "l1"]
    # A job that took the evicted object before it went still generates with it, exactly.
    engine = Engine(model, eos_ids=frozenset({2}), limits=Limits(4, 1 << 14, 64))
    engine.start()
    try:
        loop = asyncio.get_running_loop()
        outs = []
        for adapter in (evicted, again):
            handle = engine.submit(
                Job([17, 300, 42], 8, Sampling(temperature=0.0), adapter=adapter), loop
            )
            outs.append([t.token_id for t in await collect(handle)])
        assert outs[0] == outs[1]
    finally:
        await asyncio.to_thread(engine.stop, UnavailableError("test over"), 10.0)


async def test_an_adapter_the_engine_does_not_implement_is_a_400(
    model: Any, adapters: dict[str, Path], tmp_path: Path
) -> None:
    bank = AdapterBank(model, lambda: Storage(tmp_path, adapters), capacity=2)
    with pytest.raises(BadRequestError, match="use_dora"):
        await bank.get("bad", "file:///bad")
    assert bank.resident == []
