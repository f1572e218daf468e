"""The storage service converting a Hugging Face model directory from a ``file://`` registry."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from libs.cluster import ClusterState
from libs.common.registry_allow import AllowList
from libs.protocol import Bus, Keys
from libs.protocol.endpoints import STORAGE_ENSURE
from libs.protocol.errors import CancelledError, CorruptError
from libs.protocol.messages import EnsureReply, EnsureRequest
from services.storage import sources
from services.storage.app import StorageService
from services.storage.checkpoint import CheckpointFiles, parse_index, read_index_bytes
from services.storage.settings import StorageSettings
from services.storage.sources import fetch, prepare
from services.storage.transfer import Meter
from services.storage.uri import parse_registry_uri

from .probes import request_when_up
from .service_processes import storage_env

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
    nats_server: Any, redis_server: Any, root: str, tmp_path: Path, hf_model: Path
) -> AsyncIterator[StorageService]:
    settings = StorageSettings.from_env(
        storage_env(
            nats_server.url,
            redis_server.url,
            root,
            node=NODE,
            ssd=tmp_path / "ssd",
            dram=tmp_path / "dram",
            allow=str(hf_model.parent),
            SLLM_BANDWIDTH_MIN_SAMPLE_MB="0",  # the demo model is tiny
        )
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

    async def ensure(tier: str) -> EnsureReply:
        req = EnsureRequest(model=model, checkpoint_uri=hf_model.as_uri(), tier=tier)  # type: ignore[arg-type]
        return await request_when_up(bus, STORAGE_ENSURE, req, timeout=60, node_id=NODE)

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


async def test_a_first_load_is_given_the_source_and_the_copy_serves_the_loads_after_it(
    storage: StorageService, bus: Bus, hf_model: Path, tmp_path: Path
) -> None:
    """A worker about to load (``source_ok``) gets the Hugging Face directory itself while no
    tier holds a copy; the copy is made by the next ensure that asks for a tier (the worker's
    promotion after its load), and serves the loads after it."""
    model = "demo/first"
    uri = hf_model.as_uri()

    async def ensure(source_ok: bool) -> EnsureReply:
        req = EnsureRequest(model=model, checkpoint_uri=uri, tier="ssd", source_ok=source_ok)
        return await request_when_up(bus, STORAGE_ENSURE, req, timeout=60, node_id=NODE)

    first = await ensure(True)
    assert first.hf_source
    assert (Path(first.path), first.source_tier) == (hf_model, "registry")
    assert first.bytes == _visible_bytes(hf_model)
    # As the worker's promotion after its load: an ensure that asks for a tier copies.
    copy = await ensure(False)
    assert not copy.hf_source
    assert Path(copy.path).parent == tmp_path / "ssd"
    # Once a copy exists, a first load of another worker reads the copy, not the source.
    again = await ensure(True)
    assert (again.hf_source, again.path, again.source_tier) == (False, copy.path, "ssd")


# --- conversion and verification of several partitions (blocking, no servers needed) ------------------------------


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def small_partitions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Conversions in storage cut 40 kB partitions: a tiny model then has several."""
    import libs.loader

    monkeypatch.setattr(
        libs.loader, "convert_hf", functools.partial(libs.loader.convert_hf, partition_size=40_000)
    )


@pytest.fixture(scope="module")
def multi_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.unit.loader.helpers import write_hf_model

    return write_hf_model(tmp_path_factory.mktemp("hf-multi") / "model")


def _fetch(src: Path, staging: Path, meter: Meter | None = None) -> CheckpointFiles:
    plan = prepare(parse_registry_uri(src.as_uri(), AllowList.parse([str(src)])), timeout=5.0)
    assert plan.kind == "hf-file"
    staging.mkdir()
    return fetch(plan, staging / "checkpoint", meter or Meter(plan.need_bytes), timeout=5.0)


def _flip_byte(path: Path, offset: int = 100) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))
        f.flush()
        os.fsync(f.fileno())


def test_a_multi_partition_conversion_is_verified_and_committed(
    multi_model: Path, tmp_path: Path, small_partitions: None
) -> None:
    files = _fetch(multi_model, tmp_path / "staging")
    assert len(files.partitions) == 4
    assert files == parse_index(read_index_bytes(tmp_path / "staging" / "checkpoint"))


@pytest.mark.parametrize("bad", [0, 3])
def test_a_partition_corrupted_on_disk_is_caught(
    multi_model: Path,
    tmp_path: Path,
    small_partitions: None,
    monkeypatch: pytest.MonkeyPatch,
    bad: int,
) -> None:
    """Rot between the write and the read-back (a byte flipped after the conversion's fsync)."""
    parse = parse_index

    def rot_then_parse(raw: bytes) -> CheckpointFiles:
        _flip_byte(tmp_path / "staging" / "checkpoint" / f"part-{bad:05d}.bin")
        return parse(raw)

    monkeypatch.setattr(sources, "parse_index", rot_then_parse)
    fds = _open_fds()
    with pytest.raises(CorruptError, match=rf"part-{bad:05d}\.bin: chunk 0 at byte 0: XXH3-64"):
        _fetch(multi_model, tmp_path / "staging")
    assert _open_fds() == fds


def test_cancelling_a_conversion_leaves_nothing(
    multi_model: Path, tmp_path: Path, small_partitions: None
) -> None:
    cancel = threading.Event()
    calls: list[int] = []

    def progress(done: int, total: int) -> None:
        calls.append(done)
        if len(calls) == 2:
            cancel.set()

    fds = _open_fds()
    with pytest.raises(CancelledError):
        _fetch(multi_model, tmp_path / "staging", Meter(1, progress, cancel))
    assert list((tmp_path / "staging").iterdir()) == []
    assert _open_fds() == fds
