"""The storage service fetching ``hf://`` repositories from a Hugging Face Hub (a local
stand-in, `tests.hub_server`, driven by the real ``huggingface_hub`` client): downloaded into the
Hub cache once, converted into the SSD tier like a local directory, errors that say what to do."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import pytest

from libs.common.registry_allow import AllowList
from libs.protocol import Bus
from libs.protocol.endpoints import STORAGE_ENSURE
from libs.protocol.errors import (
    BadRequestError,
    CancelledError,
    NotFoundError,
    UnavailableError,
)
from libs.protocol.messages import EnsureReply, EnsureRequest
from services.storage.app import StorageService
from services.storage.checkpoint import CheckpointFiles, parse_index, read_index_bytes
from services.storage.settings import StorageSettings
from services.storage.sources import fetch, prepare
from services.storage.transfer import Meter
from services.storage.uri import parse_registry_uri
from tests.hub_server import HubRepo, HubServer

from .probes import request_when_up
from .service_processes import storage_env

pytestmark = pytest.mark.integration

NODE = "node-hub"
TOKEN = "hf_test_token_5c1e"
CHECKPOINT_FILES = (
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
)


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from libs.demo import write_demo_model

    return Path(write_demo_model(tmp_path_factory.mktemp("hub") / "tiny", "tiny"))


@pytest.fixture
def config_only(tmp_path: Path, hf_model: Path) -> Path:
    d = tmp_path / "config-only"
    d.mkdir()
    (d / "config.json").write_bytes((hf_model / "config.json").read_bytes())
    return d


@pytest.fixture
def hub(
    hf_model: Path, config_only: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[HubServer]:
    repos = {
        "org/tiny": HubRepo(hf_model),
        "org/gated": HubRepo(hf_model, token=TOKEN),
        "org/slow": HubRepo(hf_model, delay=0.1),
        "org/config-only": HubRepo(config_only),
    }
    with HubServer(repos) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored token
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
        monkeypatch.delenv("HF_TOKEN", raising=False)
        # The tests' conftest turns the Hub off (HF_HUB_OFFLINE, read at import): this one is
        # local.
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        yield server


@pytest.fixture
async def storage(
    nats_server: Any, redis_server: Any, root: str, tmp_path: Path, hub: HubServer
) -> AsyncIterator[StorageService]:
    settings = StorageSettings.from_env(
        storage_env(
            nats_server.url,
            redis_server.url,
            root,
            node=NODE,
            ssd=tmp_path / "ssd",
            dram=tmp_path / "dram",
            allow="hf://org/",
            SLLM_BANDWIDTH_MIN_SAMPLE_MB="0",
            SLLM_FETCH_TIMEOUT="5",
        )
    )
    svc = StorageService(settings)
    await svc.start()
    yield svc
    await svc.stop("test")


async def _ensure(bus: Bus, model: str, uri: str) -> EnsureReply:
    req = EnsureRequest(model=model, checkpoint_uri=uri, tier="ssd")
    return await request_when_up(bus, STORAGE_ENSURE, req, timeout=60, node_id=NODE)


def _convert_local(src: Path, dst: Path) -> CheckpointFiles:
    """The same model converted from its local directory (the ``file://`` path)."""
    plan = prepare(parse_registry_uri(src.as_uri(), AllowList.parse([str(src)])), timeout=5.0)
    return fetch(plan, dst, Meter(plan.need_bytes), timeout=5.0)


async def test_a_hub_repository_is_downloaded_once_and_converted_into_the_ssd_tier(
    storage: StorageService, bus: Bus, hub: HubServer, hf_model: Path, tmp_path: Path
) -> None:
    from libs.loader import read_index

    events: list[dict[str, Any]] = []

    async def on_msg(msg: Any) -> None:
        events.append(json.loads(msg.data))

    await bus.nc.subscribe(bus.subjects.all_events, cb=on_msg)
    r = await _ensure(bus, "org/tiny:latest", "hf://org/tiny")
    assert (r.tier, r.source_tier) == ("ssd", "registry")
    path = Path(r.path)
    assert path.parent == tmp_path / "ssd"
    assert read_index(path).total_bytes > 0  # the loader's own strict reader accepts it
    # Byte for byte what converting the local directory gives.
    local = tmp_path / "local"
    files = _convert_local(hf_model, local)
    hub_files = parse_index(read_index_bytes(path))
    assert hub_files.partitions == files.partitions
    assert read_index(path).tensors == read_index(local).tensors
    # Only the files a checkpoint needs come from the Hub (not the demo's own marker).
    assert {f.name for f in hub_files.files} == {f.name for f in files.files} - {"sllm-demo.json"}
    for p in files.partitions:
        assert (path / p.file).read_bytes() == (local / p.file).read_bytes()
    for name in ("config.json", "tokenizer.json", "generation_config.json"):
        assert (path / name).read_bytes() == (hf_model / name).read_bytes()
    # Each file a checkpoint needs, once; not the demo's own marker (sllm-demo.json).
    assert sorted(p.rsplit("/", 1)[-1] for p in hub.downloads()) == sorted(
        (*CHECKPOINT_FILES, "model.safetensors")
    )
    deadline = time.monotonic() + 10
    while not any(e["kind"] == "storage.fetched" for e in events):
        assert time.monotonic() < deadline, events
        await asyncio.sleep(0.02)
    progress = [e for e in events if e["kind"] == "storage.progress" and e["tier"] == "ssd"]
    assert progress
    assert progress[-1]["bytes_done"] <= progress[-1]["bytes_total"]

    asked = len(hub.requests)
    again = await _ensure(bus, "org/tiny:latest", "hf://org/tiny")
    assert (again.source_tier, again.path) == ("ssd", r.path)
    assert hub.requests[asked:] == []  # the SSD copy serves: the Hub is not asked again


async def test_a_revision_by_commit_is_fetched(
    storage: StorageService, bus: Bus, hub: HubServer
) -> None:
    sha = hub.repos["org/tiny"].sha
    r = await _ensure(bus, "org/tiny:pinned", f"hf://org/tiny@{sha}")
    assert (r.tier, r.source_tier) == ("ssd", "registry")
    assert all(f"/resolve/{sha}/" in p for p in hub.downloads())


async def test_unknown_repositories_and_revisions_are_not_found_naming_the_uri(
    storage: StorageService, bus: Bus, hub: HubServer
) -> None:
    with pytest.raises(NotFoundError, match="checkpoint hf://org/nope: no such repository"):
        await _ensure(bus, "org/nope:latest", "hf://org/nope")
    with pytest.raises(NotFoundError, match=r"hf://org/tiny@v9: no such revision"):
        await _ensure(bus, "org/tiny:v9", "hf://org/tiny@v9")
    with pytest.raises(BadRequestError, match="not allowed"):
        await _ensure(bus, "else/tiny:latest", "hf://else/tiny")
    assert hub.downloads() == []


async def test_a_gated_repository_needs_a_token_and_works_with_one(
    storage: StorageService, bus: Bus, hub: HubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(BadRequestError, match=r"hf://org/gated: .*gated.*HF_TOKEN") as info:
        await _ensure(bus, "org/gated:latest", "hf://org/gated")
    assert hub.downloads() == []
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    r = await _ensure(bus, "org/gated:latest", "hf://org/gated")
    assert (r.tier, r.source_tier) == ("ssd", "registry")
    assert TOKEN not in str(info.value)


# --- the fetch itself, without the service -----------------------------------------------------


def _plan(uri: str) -> Any:
    return prepare(parse_registry_uri(uri, AllowList.parse(["hf://"])), timeout=5.0)


def test_a_repository_without_weights_is_refused_before_any_download(hub: HubServer) -> None:
    with pytest.raises(BadRequestError, match=r"hf://org/config-only: .*no weights"):
        _plan("hf://org/config-only")
    assert hub.downloads() == []


def test_an_unreachable_hub_is_unavailable(hub: HubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard: nothing listens
    with pytest.raises(UnavailableError, match=r"hf://org/tiny: .*unreachable"):
        _plan("hf://org/tiny")


def test_the_hub_cache_serves_a_second_fetch_without_downloads(
    hub: HubServer, tmp_path: Path
) -> None:
    plan = _plan("hf://org/tiny")
    assert plan.kind == "hf-hub"
    first = fetch(plan, tmp_path / "a", Meter(plan.need_bytes), timeout=5.0)
    served = len(hub.downloads())
    second = fetch(_plan("hf://org/tiny"), tmp_path / "b", Meter(plan.need_bytes), timeout=5.0)
    assert second == first
    assert len(hub.downloads()) == served


def test_a_cached_commit_is_served_when_the_hub_is_out_of_reach(
    hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = _plan("hf://org/tiny")
    first = fetch(plan, tmp_path / "a", Meter(plan.need_bytes), timeout=5.0)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard: nothing listens
    again = _plan("hf://org/tiny")
    assert again.hub == plan.hub
    assert fetch(again, tmp_path / "b", Meter(again.need_bytes), timeout=5.0) == first
    # Only what a deploy-time check fetched (no weights) is not enough.
    with pytest.raises(UnavailableError, match="unreachable"):
        _plan("hf://org/gated")


def test_cancelling_a_download_stops_it_promptly_and_leaves_no_partial_file(
    hub: HubServer, tmp_path: Path
) -> None:
    plan = _plan("hf://org/slow")  # 64 KiB every 0.1 s: the 2 MB weights take ~3.3 s
    meter = Meter(plan.need_bytes)
    result: list[BaseException | None] = []

    def run() -> None:
        try:
            fetch(plan, tmp_path / "ckpt", meter, timeout=5.0)
            result.append(None)
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 10
    while not any(p.endswith("model.safetensors") for p in hub.downloads()):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.3)
    meter.cancel.set()
    t0 = time.monotonic()
    thread.join(timeout=10)
    assert time.monotonic() - t0 < 1.5
    assert len(result) == 1
    assert isinstance(result[0], CancelledError)
    cache = tmp_path / "hub-cache"
    assert not [p for p in cache.rglob("*.incomplete")]
    assert not [p for p in cache.rglob("model.safetensors")]
    assert not (tmp_path / "ckpt").exists()


def test_deploy_time_checks_get_config_and_tokenizer_but_no_weights(hub: HubServer) -> None:
    from libs.common.hub_ids import parse_hub_uri
    from services.storage.hub import hub_metadata, weights

    source = parse_hub_uri("hf://org/tiny")
    size = len(hub.repos["org/tiny"].files["model.safetensors"])
    assert weights(source, timeout=5.0) == [("model.safetensors", size)]
    snapshot = hub_metadata(source, timeout=5.0)
    assert sorted(p.name for p in snapshot.iterdir()) == sorted(CHECKPOINT_FILES)
    assert not [p for p in hub.downloads() if p.endswith(".safetensors")]
    with pytest.raises(BadRequestError, match=r"hf://org/gated: .*HF_TOKEN"):
        hub_metadata(parse_hub_uri("hf://org/gated"), timeout=5.0)
