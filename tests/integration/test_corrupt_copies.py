"""Never wrong weights: a tier copy with one flipped byte is found at the next load, reported,
quarantined by the storage service, and the load falls back to another tier or a fresh copy
from the registry; the output is the right one. Real storage service, real worker, real NATS
and Valkey; the DRAM tier on tmpfs, as in production."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from libs.cluster import ClusterState
from libs.loader import INDEX_FILE, load_model, read_index
from libs.loader.seal import SEAL_FILE
from libs.protocol import Bus
from libs.protocol.endpoints import (
    STORAGE_ENSURE,
    STORAGE_QUARANTINE,
    WORKER_GENERATE,
    WORKER_LOAD,
)
from libs.protocol.messages import (
    EnsureReply,
    EnsureRequest,
    GenerateRequest,
    LoadRequest,
    QuarantineReply,
    QuarantineRequest,
    SamplingParams,
)
from services.storage.app import StorageService
from services.storage.settings import StorageSettings
from services.worker.app import WorkerService
from tests.e2e.events import Events

from .probes import request_when_up
from .service_processes import reserve_for_load, running_worker, storage_env

pytestmark = pytest.mark.integration

NODE, WORKER, MODEL = "n-corrupt", "w-corrupt", "tiny"
PROMPT = [904, 594, 330, 14, 394, 277, 318]
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def expected(checkpoint: Path) -> list[int]:
    """The greedy continuation of PROMPT on the intact weights (transformers' generate)."""
    return _greedy(checkpoint, verify=True)


def _greedy(path: Path, *, verify: bool) -> list[int]:
    model = load_model(path, verify=verify)
    with torch.inference_mode():
        out = model.generate(torch.tensor([PROMPT]), do_sample=False, max_new_tokens=MAX_TOKENS)
    return [int(i) for i in out[0, len(PROMPT) :]]


def flip_weight_byte(copy: Path, tensor: str = "model.norm.weight") -> str:
    """Flip one bit of the most significant byte of ``tensor``'s first float32 (which every
    token's logits go through); returns the partition's file name. The file is read-only, as
    the storage service leaves it: a stray writer has to chmod it first, as this one does."""
    index = read_index(copy)
    t = next(t for t in index.tensors if t.name == tensor)
    assert t.partition is not None
    part = index.partitions[t.partition].file
    path = copy / part
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    with open(path, "r+b") as f:
        f.seek(t.offset + 3)
        b = f.read(1)[0]
        f.seek(t.offset + 3)
        f.write(bytes([b ^ 0x40]))
    return part


@pytest.fixture
def dram_dir() -> Iterator[Path]:
    """The DRAM tier on tmpfs (where seals apply), like production; removed afterwards."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    path = Path(tempfile.mkdtemp(prefix="sllm-test-dram-", dir=base))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def registry(tmp_path: Path, checkpoint: Path) -> Path:
    """The tiny model in a registry directory of this test's own (the checkpoint fixture is
    shared by the module: it must stay intact)."""
    return Path(shutil.copytree(checkpoint, tmp_path / "registry" / "tiny"))


@pytest.fixture
async def storage(
    nats_server: Any, redis_server: Any, root: str, tmp_path: Path, dram_dir: Path
) -> AsyncIterator[StorageService]:
    env = storage_env(
        nats_server.url,
        redis_server.url,
        root,
        node=NODE,
        ssd=tmp_path / "ssd",
        dram=dram_dir,
        allow=str(tmp_path / "registry"),
        SLLM_DRAM_CAPACITY_GB="0.05",
        SLLM_BANDWIDTH_MIN_SAMPLE_MB="0",
    )
    svc = StorageService(StorageSettings.from_env(env))
    await svc.start()
    yield svc
    await svc.stop("test over")


@pytest.fixture
async def worker(
    nats_server: Any, redis_server: Any, root: str, storage: StorageService
) -> AsyncIterator[WorkerService]:
    async with running_worker(
        nats_server.url, redis_server.url, root, worker_id=WORKER, node=NODE, load_timeout_s=60
    ) as svc:
        yield svc


async def ensure(bus: Bus, uri: str, tier: str) -> EnsureReply:
    req = EnsureRequest(model=MODEL, checkpoint_uri=uri, tier=tier)  # type: ignore[arg-type]
    return await request_when_up(bus, STORAGE_ENSURE, req, timeout=60, node_id=NODE)


async def load_and_generate(bus: Bus, state: ClusterState, uri: str, events: Events) -> list[int]:
    """What the scheduler and the router do: reserve the worker, load, then one greedy request."""
    iid = "i-" + os.urandom(4).hex()
    await reserve_for_load(state, iid=iid, model=MODEL, worker_id=WORKER, node=NODE)
    req = LoadRequest(instance_id=iid, model=MODEL, checkpoint_uri=uri)
    await request_when_up(bus, WORKER_LOAD, req, timeout=60, worker_id=WORKER)
    await events.wait("instance.ready", instance_id=iid)
    gen = GenerateRequest(
        request_id="r-" + iid,
        model=MODEL,
        prompt_token_ids=PROMPT,
        params=SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0),
    )
    async with await bus.stream(WORKER_GENERATE, gen, worker_id=WORKER, timeout=30) as reader:
        return [i for c in [c async for c in reader] for i in c.token_ids]


async def test_a_flipped_byte_in_the_dram_copy_is_quarantined_and_the_load_falls_back(
    bus: Bus, state: ClusterState, registry: Path, worker: WorkerService, expected: list[int]
) -> None:
    events = await Events().start(bus)
    uri = registry.as_uri()
    dram = Path((await ensure(bus, uri, "dram")).path)
    # The storage service verified the copy on its way in: sealed, and read-only.
    assert (dram / SEAL_FILE).is_file()
    part = flip_weight_byte(dram)
    # The flip matters: without verification this copy gives other tokens.
    assert _greedy(dram, verify=False) != expected

    assert await load_and_generate(bus, state, uri, events) == expected

    (quarantined,) = await events.wait("storage.quarantined", tier="dram")
    assert (quarantined["node_id"], quarantined["model"]) == (NODE, MODEL)
    assert (quarantined["file"], quarantined["reporter"]) == (part, WORKER)
    assert "XXH3-64" in quarantined["reason"]
    assert events.of("storage.evicted", tier="dram", reason="corrupt")
    (ready,) = await events.wait("instance.ready")
    assert ready["source_tier"] == "ssd"  # the fallback: the node's SSD copy
    # After the load from SSD the worker has the node promote it again: a fresh, intact copy
    # (the first promotion was the test's own ensure).
    await events.wait("storage.fetched", 2, tier="dram", source_tier="ssd")
    assert MODEL in (await state.locality(NODE)).dram
    assert (dram / part).read_bytes() == (registry / part).read_bytes()


async def test_a_flipped_byte_in_the_only_ssd_copy_is_refetched_from_the_registry(
    bus: Bus, state: ClusterState, registry: Path, worker: WorkerService, expected: list[int]
) -> None:
    events = await Events().start(bus)
    uri = registry.as_uri()
    ssd = await ensure(bus, uri, "ssd")
    assert ssd.tier == "ssd"
    part = flip_weight_byte(Path(ssd.path))

    # One node, no DRAM copy: before, every load of this model failed here for good.
    assert await load_and_generate(bus, state, uri, events) == expected

    (quarantined,) = await events.wait("storage.quarantined", tier="ssd")
    assert (quarantined["file"], quarantined["reporter"]) == (part, WORKER)
    (ready,) = await events.wait("instance.ready")
    assert ready["source_tier"] == "registry"
    # Fetched twice from the registry: the test's ensure, then the re-fetch.
    fetched = events.of("storage.fetched", tier="ssd")
    assert [e["source_tier"] for e in fetched] == ["registry", "registry"]
    assert (Path(ssd.path) / part).read_bytes() == (registry / part).read_bytes()


async def test_a_report_is_checked_before_a_copy_is_removed(
    bus: Bus, state: ClusterState, registry: Path, storage: StorageService
) -> None:
    events = await Events().start(bus)
    uri = registry.as_uri()
    dram = await ensure(bus, uri, "dram")
    copy = Path(dram.path)
    part = read_index(copy).partitions[0].file
    assert stat.S_IMODE((copy / part).stat().st_mode) == 0o444

    async def report(path: str, offset: int | None) -> QuarantineReply:
        req = QuarantineRequest(
            model=MODEL, tier="dram", path=path, file=part, offset=offset, reporter="test"
        )
        return await request_when_up(bus, STORAGE_QUARANTINE, req, timeout=60, node_id=NODE)

    # A false claim (the chunk is intact) and a claim about a copy that is not the current
    # one change nothing.
    assert not (await report(str(copy), 0)).quarantined
    stale = await report(str(copy.parent / "elsewhere"), 0)
    assert not stale.quarantined
    assert "current copy" in stale.detail
    assert (copy / INDEX_FILE).is_file()
    assert MODEL in (await state.locality(NODE)).dram

    flip_weight_byte(copy)
    reply = await report(str(copy), 0)
    assert reply.quarantined
    assert "chunk 0" in reply.detail
    assert not await asyncio.to_thread(copy.exists)
    assert MODEL not in (await state.locality(NODE)).dram
    assert MODEL in (await state.locality(NODE)).ssd
    (event,) = events.of("storage.quarantined")
    assert (event["tier"], event["file"], event["offset"], event["reporter"]) == (
        "dram",
        part,
        0,
        "test",
    )
    # The next ensure serves the SSD copy; a DRAM request makes a fresh DRAM copy.
    assert (await ensure(bus, uri, "ssd")).tier == "ssd"
    again = await ensure(bus, uri, "dram")
    assert (again.tier, again.source_tier) == ("dram", "ssd")
