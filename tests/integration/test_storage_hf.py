"""The storage service converting a Hugging Face model directory from a ``file://`` registry."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from libs.cluster import ClusterState
from libs.protocol import Bus, Keys
from libs.protocol.endpoints import STORAGE_ENSURE
from libs.protocol.errors import NoRespondersError
from libs.protocol.messages import EnsureRequest
from services.storage.app import StorageService
from services.storage.settings import StorageSettings

pytestmark = pytest.mark.integration

NODE = "node-hf"


def _visible_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if not f.name.startswith("."))


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from libs.demo import write_demo_model

    return Path(write_demo_model(tmp_path_factory.mktemp("hf") / "tiny", "tiny"))


@pytest.fixture
async def storage(
    nats_server: Any, redis_server: Any, root: str, tmp_path: Path
) -> AsyncIterator[StorageService]:
    settings = StorageSettings.from_env(
        {
            "SLLM_NATS_URL": nats_server.url,
            "SLLM_REDIS_URL": redis_server.url,
            "SLLM_ROOT": root,
            "SLLM_NODE_ID": NODE,
            "SLLM_SSD_DIR": str(tmp_path / "ssd"),
            "SLLM_DRAM_DIR": str(tmp_path / "dram"),
            "SLLM_BANDWIDTH_PROBE_MB": "0",
            "SLLM_BANDWIDTH_MIN_SAMPLE_MB": "0",  # the demo model is tiny
        }
    )
    svc = StorageService(settings)
    await svc.start()
    yield svc
    await svc.stop("test")


async def test_hf_directory_is_converted_verified_promoted_and_published(
    storage: StorageService, bus: Bus, redis: aioredis.Redis, keys: Keys, hf_model: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    from libs.loader import read_index

    events: list[dict[str, Any]] = []

    async def on_msg(msg: Any) -> None:
        events.append(json.loads(msg.data))

    await bus.nc.subscribe(bus.subjects.all_events, cb=on_msg)
    model = "demo/tiny:latest"

    async def ensure(tier: str) -> Any:
        req = EnsureRequest(model=model, checkpoint_uri=hf_model.as_uri(), tier=tier)  # type: ignore[arg-type]
        deadline = time.monotonic() + 5
        while True:
            try:
                return await bus.request(STORAGE_ENSURE, req, timeout=60, node_id=NODE)
            except NoRespondersError:  # a just-made subscription (see test_storage_service)
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.02)

    r = await ensure("ssd")
    assert (r.tier, r.source_tier) == ("ssd", "registry")
    path = Path(r.path)
    assert path.parent == tmp_path / "ssd"
    index = read_index(path)  # the loader's own strict reader accepts it
    assert index.total_bytes > 0
    for name in ("config.json", "tokenizer.json", "generation_config.json"):
        assert (path / name).is_file()
    assert r.bytes == _visible_bytes(path)

    promoted = await ensure("dram")
    assert (promoted.tier, promoted.source_tier, promoted.bytes) == ("dram", "ssd", r.bytes)
    hit = await ensure("dram")
    assert (hit.source_tier, hit.path) == ("dram", promoted.path)

    loc = await ClusterState(redis, keys).locality(NODE)
    assert loc.ssd == {model: r.bytes}
    assert loc.dram == {model: r.bytes}
    assert set(loc.bandwidth) >= {"registry", "ssd"}

    deadline = time.monotonic() + 10
    while len([e for e in events if e["kind"] == "storage.fetched"]) < 2:
        assert time.monotonic() < deadline, events
        await asyncio.sleep(0.02)
    fetched = [(e["tier"], e["source_tier"]) for e in events if e["kind"] == "storage.fetched"]
    assert fetched == [("ssd", "registry"), ("dram", "ssd")]
    assert any(e["kind"] == "storage.progress" and e["tier"] == "ssd" for e in events)
