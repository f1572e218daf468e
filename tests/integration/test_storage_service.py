"""The storage service against real NATS and Redis: fetch, promote, LRU, HTTP, corruption."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis.asyncio as aioredis

from libs.cluster import ClusterState
from libs.protocol import Bus, Endpoint, Keys, Message
from libs.protocol.endpoints import STORAGE_ENSURE, STORAGE_EVICT
from libs.protocol.errors import (
    BadRequestError,
    BusTimeoutError,
    ConflictError,
    CorruptError,
    NotFoundError,
    StorageFullError,
    UnavailableError,
)
from libs.protocol.messages import EnsureReply, EnsureRequest, EvictReply, EvictRequest
from libs.protocol.state import InstanceRecord
from services.storage.app import StorageService
from services.storage.names import checkpoint_dirname
from services.storage.settings import StorageSettings
from tests.unit.storage.fake_checkpoint import flip_byte, write_fake_checkpoint

from .probes import request_when_up
from .service_processes import storage_env

pytestmark = pytest.mark.integration

NODE = "node-s"
Req = TypeVar("Req", bound=Message)
Rep = TypeVar("Rep", bound=Message)
CKPT_BYTES = 256 << 10  # partition bytes of a small fake checkpoint (~263 kB on disk in all)


class Events:
    """Every event on ``<root>.events.>`` as plain JSON, the way any subscriber sees them."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    async def start(self, bus: Bus) -> None:
        async def on_msg(msg: Any) -> None:
            self.items.append(json.loads(msg.data))

        await bus.nc.subscribe(bus.subjects.all_events, cb=on_msg)
        await bus.nc.flush()

    def of(self, kind: str, **match: Any) -> list[dict[str, Any]]:
        return [
            e
            for e in self.items
            if e["kind"] == kind and all(e.get(k) == v for k, v in match.items())
        ]

    async def wait(self, kind: str, count: int = 1, **match: Any) -> list[dict[str, Any]]:
        deadline = time.monotonic() + 10
        while len(self.of(kind, **match)) < count:
            assert time.monotonic() < deadline, f"no {count}x {kind} {match}: {self.items}"
            await asyncio.sleep(0.02)
        return self.of(kind, **match)


@pytest.fixture
async def events(bus: Bus) -> Events:
    ev = Events()
    await ev.start(bus)
    return ev


class Storages:
    """Starts storage services with this test's NATS, Redis, root and tier directories."""

    def __init__(self, base_env: dict[str, str]) -> None:
        self.base_env = base_env
        self.running: list[StorageService] = []

    async def __call__(self, **env: str) -> StorageService:
        svc = StorageService(StorageSettings.from_env({**self.base_env, **env}))
        await svc.start()
        self.running.append(svc)
        return svc

    async def stop(self, svc: StorageService) -> None:
        self.running.remove(svc)
        await svc.stop("test")


@pytest.fixture
async def start_storage(
    nats_server: Any, redis_server: Any, root: str, tmp_path: Path,
    http_registry: tuple[str, list[str]],
) -> AsyncIterator[Storages]:  # fmt: skip
    storages = Storages(
        storage_env(
            nats_server.url,
            redis_server.url,
            root,
            node=NODE,
            ssd=tmp_path / "ssd",
            dram=tmp_path / "dram",
            # The test's directory and its HTTP registry, explicitly: it is on loopback.
            allow=f"{tmp_path},{http_registry[0]}/",
            SLLM_DRAM_CAPACITY_GB="0.0006",  # two small checkpoints, not three
            SLLM_BANDWIDTH_MIN_SAMPLE_MB="0",  # test checkpoints are tiny
        )
    )
    yield storages
    for svc in list(storages.running):
        await storages.stop(svc)


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    path = tmp_path / "registry"
    path.mkdir()
    return path


@pytest.fixture
def http_registry(registry: Path) -> Iterator[tuple[str, list[str]]]:
    """A plain HTTP file server over ``registry`` on a free port; records request paths."""
    requests: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(registry), **kwargs)

        def do_GET(self) -> None:
            requests.append(self.path)
            if "stall" in self.path and self.path.endswith(".bin"):
                # Headers and a few bytes, then silence: a registry that hangs mid-transfer.
                self.send_response(200)
                self.send_header("Content-Length", str(CKPT_BYTES))
                self.end_headers()
                self.wfile.write(b"\0" * 4096)
                self.wfile.flush()
                time.sleep(3)
                return
            super().do_GET()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True  # a stalled handler must not hold up the teardown
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", requests
    server.shutdown()
    server.server_close()


async def call(bus: Bus, endpoint: Endpoint[Req, Rep], msg: Req) -> Rep:
    """A request to the storage service under test."""
    return await request_when_up(bus, endpoint, msg, timeout=30, node_id=NODE)


async def ensure(bus: Bus, model: str, uri: str, tier: str = "ssd") -> EnsureReply:
    req = EnsureRequest(model=model, checkpoint_uri=uri, tier=tier)  # type: ignore[arg-type]
    return await call(bus, STORAGE_ENSURE, req)


async def evict(bus: Bus, model: str, tier: str) -> EvictReply:
    return await call(bus, STORAGE_EVICT, EvictRequest(model=model, tier=tier))  # type: ignore[arg-type]


def fake(registry: Path, name: str, seed: int = 0, size: int = CKPT_BYTES) -> str:
    return (write_fake_checkpoint(registry / name, seed=seed, partition_bytes=size)).as_uri()


def tier_dirs(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir()) if path.exists() else []


async def test_ensure_ssd_fetches_then_dram_promotes_then_hits(
    start_storage: Storages, bus: Bus, events: Events, redis: aioredis.Redis, keys: Keys,
    registry: Path, tmp_path: Path,
) -> None:  # fmt: skip
    await start_storage()
    uri = fake(registry, "m1")
    r1 = await ensure(bus, "org/m1:v1", uri, "ssd")
    assert (r1.tier, r1.source_tier) == ("ssd", "registry")
    assert Path(r1.path) == tmp_path / "ssd" / checkpoint_dirname("org/m1:v1")
    assert (Path(r1.path) / "part-00000.bin").read_bytes() == (
        registry / "m1" / "part-00000.bin"
    ).read_bytes()
    r2 = await ensure(bus, "org/m1:v1", uri, "dram")
    assert (r2.tier, r2.source_tier, r2.bytes) == ("dram", "ssd", r1.bytes)
    assert Path(r2.path).parent == tmp_path / "dram"
    r3 = await ensure(bus, "org/m1:v1", uri, "dram")
    assert (r3.tier, r3.source_tier, r3.path) == ("dram", "dram", r2.path)
    assert r3.seconds < 1.0
    loc = await ClusterState(redis, keys).locality(NODE)
    assert loc.ssd == {"org/m1:v1": r1.bytes}
    assert loc.dram == {"org/m1:v1": r1.bytes}
    assert loc.bandwidth.get("registry", 0) > 0
    (done_ssd,) = await events.wait("storage.fetched", tier="ssd")
    assert (done_ssd["source_tier"], done_ssd["bytes"], done_ssd["node_id"]) == (
        "registry", r1.bytes, NODE
    )  # fmt: skip
    await events.wait("storage.fetched", tier="dram", source_tier="ssd")
    progress = await events.wait("storage.progress", tier="ssd", model="org/m1:v1")
    assert progress[-1]["bytes_done"] <= progress[-1]["bytes_total"]
    assert len(events.of("storage.fetched")) == 2  # the hit moved nothing


async def test_ssd_reader_does_not_wait_behind_a_promotion_in_progress(
    start_storage: Storages, bus: Bus, registry: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker about to load asks for the SSD copy while a prefetch promotes the model to
    DRAM: it gets the SSD copy at once, and the promotion still completes."""
    svc = await start_storage()
    uri = fake(registry, "m")
    await ensure(bus, "m", uri, "ssd")
    gate = threading.Event()
    promote = svc.tiers._promote_blocking

    def held(*args: Any) -> Any:
        assert gate.wait(30), "the test never opened the gate"
        return promote(*args)

    monkeypatch.setattr(svc.tiers, "_promote_blocking", held)
    promoting = asyncio.ensure_future(ensure(bus, "m", uri, "dram"))
    try:
        await asyncio.sleep(0.2)  # the promotion is now blocked inside the copy
        assert not promoting.done()
        reader = await asyncio.wait_for(ensure(bus, "m", uri, "ssd"), 5)
        assert (reader.tier, reader.source_tier) == ("ssd", "ssd")
    finally:
        gate.set()
    promoted = await asyncio.wait_for(promoting, 30)
    assert promoted.tier == "dram"
    again = await ensure(bus, "m", uri, "ssd")  # "at least as fast": the DRAM copy now
    assert (again.tier, again.path) == ("dram", promoted.path)


async def test_probe_publishes_tier_bandwidths_at_start(
    start_storage: Storages, redis: aioredis.Redis, keys: Keys
) -> None:
    await start_storage(SLLM_BANDWIDTH_PROBE_MB="1")
    state = ClusterState(redis, keys)
    deadline = time.monotonic() + 10
    while set((await state.locality(NODE)).bandwidth) != {"ssd", "dram"}:
        assert time.monotonic() < deadline, "the start-up probe published nothing"
        await asyncio.sleep(0.05)


async def test_dram_lru_evicts_the_least_recently_used(
    start_storage: Storages, bus: Bus, events: Events, redis: aioredis.Redis, keys: Keys,
    registry: Path,
) -> None:  # fmt: skip
    await start_storage()
    uris = {m: fake(registry, m, seed=i) for i, m in enumerate(("a", "b", "c"))}
    await ensure(bus, "a", uris["a"], "dram")
    await ensure(bus, "b", uris["b"], "dram")
    assert (await ensure(bus, "a", uris["a"], "dram")).source_tier == "dram"  # a is now newer
    rc = await ensure(bus, "c", uris["c"], "dram")
    assert rc.tier == "dram"
    (ev,) = await events.wait("storage.evicted")
    assert (ev["model"], ev["tier"], ev["reason"]) == ("b", "dram", "lru")
    loc = await ClusterState(redis, keys).locality(NODE)
    assert set(loc.dram) == {"a", "c"}
    assert set(loc.ssd) == {"a", "b", "c"}  # DRAM eviction keeps the SSD copy
    rb = await ensure(bus, "b", uris["b"], "dram")
    assert (rb.tier, rb.source_tier) == ("dram", "ssd")
    (ev2,) = [e for e in await events.wait("storage.evicted", 2) if e is not ev]
    assert ev2["model"] == "a"


async def test_a_checkpoint_too_big_for_dram_is_served_from_ssd(
    start_storage: Storages, bus: Bus, registry: Path, tmp_path: Path
) -> None:
    await start_storage()
    r = await ensure(bus, "big", fake(registry, "big", size=1 << 20), "dram")
    assert (r.tier, r.source_tier) == ("ssd", "registry")
    assert Path(r.path).parent == tmp_path / "ssd"
    assert tier_dirs(tmp_path / "dram") == []


async def test_evict_dram_keeps_ssd_and_evict_ssd_removes_both(
    start_storage: Storages, bus: Bus, events: Events, redis: aioredis.Redis, keys: Keys,
    registry: Path, tmp_path: Path,
) -> None:  # fmt: skip
    await start_storage()
    uri = fake(registry, "m")
    await ensure(bus, "m", uri, "dram")
    r = await evict(bus, "m", "dram")
    assert r.evicted
    state = ClusterState(redis, keys)
    loc = await state.locality(NODE)
    assert (loc.dram, set(loc.ssd)) == ({}, {"m"})
    assert tier_dirs(tmp_path / "dram") == []
    r = await evict(bus, "m", "dram")
    assert not r.evicted
    await ensure(bus, "m", uri, "dram")
    r = await evict(bus, "m", "ssd")
    assert r.evicted
    loc = await state.locality(NODE)
    assert (loc.dram, loc.ssd) == ({}, {})
    assert tier_dirs(tmp_path / "ssd") == tier_dirs(tmp_path / "dram") == []
    evs = await events.wait("storage.evicted", 3, reason="requested")
    assert [e["tier"] for e in evs] == ["dram", "dram", "ssd"]


async def test_http_registry(
    start_storage: Storages, bus: Bus, registry: Path,
    http_registry: tuple[str, list[str]], tmp_path: Path,
) -> None:  # fmt: skip
    await start_storage()
    base, requests = http_registry
    fake(registry, "h", seed=7)
    r = await ensure(bus, "h", f"{base}/h", "dram")
    assert (r.tier, r.source_tier) == ("dram", "registry")
    assert (Path(r.path) / "part-00000.bin").read_bytes() == (
        registry / "h" / "part-00000.bin"
    ).read_bytes()
    assert sorted(requests) == ["/h/config.json", "/h/part-00000.bin", "/h/sllm-index.json"]
    with pytest.raises(NotFoundError, match="404"):
        await ensure(bus, "nope", f"{base}/nope/")


async def test_an_unreachable_http_registry_is_unavailable(
    start_storage: Storages, bus: Bus
) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    await start_storage(SLLM_REGISTRY_ALLOW=f"http://127.0.0.1:{port}/")
    with pytest.raises(UnavailableError, match="cannot reach"):
        await ensure(bus, "x", f"http://127.0.0.1:{port}/x/")


async def test_corrupt_registry_copy_is_fetched_twice_then_reported_and_nothing_left(
    start_storage: Storages, bus: Bus, events: Events, redis: aioredis.Redis, keys: Keys,
    registry: Path, http_registry: tuple[str, list[str]], tmp_path: Path,
) -> None:  # fmt: skip
    await start_storage()
    base, requests = http_registry
    fake(registry, "bad")
    flip_byte(registry / "bad" / "part-00000.bin", 70_000)
    with pytest.raises(CorruptError, match="twice") as info:
        await ensure(bus, "bad", f"{base}/bad/", "dram")
    assert "chunk 1" in info.value.message
    assert requests.count("/bad/part-00000.bin") == 2
    assert tier_dirs(tmp_path / "ssd") == tier_dirs(tmp_path / "dram") == []
    loc = await ClusterState(redis, keys).locality(NODE)
    assert (loc.ssd, loc.dram) == ({}, {})
    assert events.of("storage.fetched") == []


async def test_ssd_copy_that_rotted_is_refetched_on_promotion(
    start_storage: Storages, bus: Bus, registry: Path
) -> None:
    await start_storage()
    uri = fake(registry, "rot")
    r = await ensure(bus, "rot", uri, "ssd")
    flip_byte(Path(r.path) / "part-00000.bin", 10)
    r2 = await ensure(bus, "rot", uri, "dram")
    assert (r2.tier, r2.source_tier) == ("dram", "registry")


async def test_bad_sources_get_typed_errors(
    start_storage: Storages, bus: Bus, registry: Path, tmp_path: Path
) -> None:
    await start_storage()
    with pytest.raises(NotFoundError, match="does not exist"):
        await ensure(bus, "m", (tmp_path / "missing").as_uri())
    with pytest.raises(BadRequestError, match="s3://bucket/m"):
        await ensure(bus, "m", "s3://bucket/m")
    (registry / "empty").mkdir()
    with pytest.raises(BadRequestError, match="neither"):
        await ensure(bus, "m", (registry / "empty").as_uri())
    assert tier_dirs(tmp_path / "ssd") == []


async def test_concurrent_ensures_of_one_model_fetch_once(
    start_storage: Storages, bus: Bus, events: Events, registry: Path
) -> None:
    await start_storage()
    uri = fake(registry, "m")
    other = fake(registry, "n", seed=1)
    replies = await asyncio.gather(
        *(ensure(bus, "m", uri, tier) for tier in ("dram", "ssd", "dram", "ssd", "dram")),
        ensure(bus, "n", other, "ssd"),
    )
    sources = [r.source_tier for r in replies[:5]]
    assert sources.count("registry") == 1
    tiers = [r.tier for r in replies[:5]]
    assert tiers[0::2] == ["dram", "dram", "dram"]
    # An SSD request served after the promotion gets the (faster) DRAM copy.
    assert set(tiers[1::2]) <= {"ssd", "dram"}
    assert len({r.path for r in replies[:5] if r.tier == "dram"}) == 1
    await events.wait("storage.fetched", 2, tier="ssd")
    await asyncio.sleep(0.1)
    assert len(events.of("storage.fetched", tier="ssd", model="m")) == 1
    assert len(events.of("storage.fetched", tier="dram", model="m")) == 1


async def test_a_new_checkpoint_uri_replaces_the_old_copy(
    start_storage: Storages, bus: Bus, events: Events, registry: Path
) -> None:
    await start_storage()
    old, new = fake(registry, "v1", seed=1), fake(registry, "v2", seed=2)
    await ensure(bus, "m", old, "dram")
    r = await ensure(bus, "m", new, "dram")
    assert r.source_tier == "registry"
    assert (Path(r.path) / "part-00000.bin").read_bytes() == (
        registry / "v2" / "part-00000.bin"
    ).read_bytes()
    assert {e["tier"] for e in await events.wait("storage.evicted", 2, reason="replaced")} == {
        "ssd",
        "dram",
    }


async def test_restart_reindexes_tiers_and_republishes_locality(
    start_storage: Storages, bus: Bus, redis: aioredis.Redis, keys: Keys, registry: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    svc = await start_storage()
    uri = fake(registry, "keep")
    r = await ensure(bus, "keep", uri, "dram")
    damaged = await ensure(bus, "damaged", fake(registry, "damaged", seed=3), "ssd")
    await start_storage.stop(svc)
    (Path(damaged.path) / "part-00000.bin").write_bytes(b"truncated")
    (tmp_path / "ssd" / ".sllm-tmp-interrupted" / "checkpoint").mkdir(parents=True)
    state = ClusterState(redis, keys)
    await state.set_locality(NODE, "ssd", "ghost", 123)  # stale: nothing on disk
    await start_storage()
    loc = await state.locality(NODE)
    assert (set(loc.ssd), set(loc.dram)) == ({"keep"}, {"keep"})
    assert tier_dirs(tmp_path / "ssd") == [checkpoint_dirname("keep")]
    again = await ensure(bus, "keep", uri, "dram")
    assert (again.source_tier, again.path, again.bytes) == ("dram", r.path, r.bytes)


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"SLLM_FETCH_TIMEOUT": "0.3"}, "stalled"),
        ({"SLLM_FETCH_TIMEOUT": "1", "SLLM_ENSURE_TIMEOUT": "0.3"}, "not done within"),
    ],
)
async def test_a_stalled_registry_times_out_and_leaves_nothing(
    start_storage: Storages, bus: Bus, registry: Path, http_registry: tuple[str, list[str]],
    tmp_path: Path, env: dict[str, str], match: str,
) -> None:  # fmt: skip
    await start_storage(**env)
    base, _ = http_registry
    fake(registry, "stall")
    t0 = time.monotonic()
    with pytest.raises(BusTimeoutError, match=match):
        await ensure(bus, "s", f"{base}/stall/")
    assert time.monotonic() - t0 < 10
    assert tier_dirs(tmp_path / "ssd") == []


async def test_ssd_capacity_evicts_lru_from_both_tiers(
    start_storage: Storages, bus: Bus, events: Events, redis: aioredis.Redis, keys: Keys,
    registry: Path,
) -> None:  # fmt: skip
    await start_storage(SLLM_SSD_CAPACITY_GB="0.0006")
    uris = {m: fake(registry, m, seed=i) for i, m in enumerate(("a", "b", "c"))}
    await ensure(bus, "a", uris["a"], "dram")
    await ensure(bus, "b", uris["b"], "ssd")
    await ensure(bus, "c", uris["c"], "ssd")
    evs = await events.wait("storage.evicted", 2, model="a", reason="lru")
    assert {e["tier"] for e in evs} == {"ssd", "dram"}
    loc = await ClusterState(redis, keys).locality(NODE)
    assert (set(loc.ssd), loc.dram) == ({"b", "c"}, {})
    with pytest.raises(StorageFullError):
        await ensure(bus, "big", fake(registry, "big", size=1 << 20), "ssd")


async def test_a_copy_deleted_behind_the_services_back_is_restored(
    start_storage: Storages, bus: Bus, events: Events, registry: Path
) -> None:
    import shutil

    await start_storage()
    uri = fake(registry, "m")
    r = await ensure(bus, "m", uri, "dram")
    await asyncio.to_thread(shutil.rmtree, r.path)
    again = await ensure(bus, "m", uri, "dram")
    assert (again.tier, again.source_tier, again.path) == ("dram", "ssd", r.path)
    (ev,) = await events.wait("storage.evicted", reason="missing")
    assert ev["tier"] == "dram"


async def _instance_on_node(state: ClusterState, model: str, status: str = "ready") -> None:
    """A live instance of ``model`` on a worker of this node, as the scheduler records it."""
    worker, instance = f"w-{model}", f"i-{model}"
    await state.register_worker(worker, NODE, "cpu")
    assert await state.reserve_worker(worker, instance)
    await state.put_instance(
        InstanceRecord(
            instance_id=instance,
            model=model,
            worker_id=worker,
            node_id=NODE,
            status=status,  # type: ignore[arg-type]
            created_at=time.time(),
        )
    )


async def test_a_copy_in_use_is_never_evicted_and_lru_takes_the_next(
    start_storage: Storages, bus: Bus, events: Events, redis: aioredis.Redis, keys: Keys,
    registry: Path,
) -> None:  # fmt: skip
    await start_storage()
    state = ClusterState(redis, keys)
    uris = {m: fake(registry, m, seed=i) for i, m in enumerate(("a", "b", "c", "d"))}
    await ensure(bus, "a", uris["a"], "dram")
    await ensure(bus, "b", uris["b"], "dram")
    await _instance_on_node(state, "a")  # "a" is the least recently used, but in use
    await ensure(bus, "c", uris["c"], "dram")
    (ev,) = await events.wait("storage.evicted")
    assert (ev["model"], ev["tier"], ev["reason"]) == ("b", "dram", "lru")
    assert set((await state.locality(NODE)).dram) == {"a", "c"}
    # Now "c" is in use too: a new copy finds no room it may take, and is not made.
    await _instance_on_node(state, "c", status="loading")
    rd = await ensure(bus, "d", uris["d"], "dram")
    assert (rd.tier, rd.source_tier) == ("ssd", "registry")
    (skip,) = await events.wait("storage.skipped")
    assert (skip["model"], skip["tier"], skip["reason"]) == ("d", "dram", "pinned")
    assert skip["pinned"] == ["a", "c"]
    assert len(events.of("storage.evicted")) == 1
    assert set((await state.locality(NODE)).dram) == {"a", "c"}


async def test_an_unloaded_instance_leaves_its_copy_evictable_and_in_place(
    start_storage: Storages, bus: Bus, events: Events, redis: aioredis.Redis, keys: Keys,
    registry: Path,
) -> None:  # fmt: skip
    await start_storage()
    state = ClusterState(redis, keys)
    uri = fake(registry, "m")
    await ensure(bus, "m", uri, "dram")
    await _instance_on_node(state, "m")
    with pytest.raises(ConflictError):
        await evict(bus, "m", "dram")
    rec = await state.get_instance("i-m")
    assert rec is not None
    await state.delete_instance(rec)  # the instance is unloaded: the copy stays until asked
    await state.release_worker("w-m", "i-m")
    assert set((await state.locality(NODE)).dram) == {"m"}
    assert (await evict(bus, "m", "dram")).evicted
