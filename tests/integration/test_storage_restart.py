"""Waits that follow the storage service's life: `kill -9` of a node's storage service in the
middle of a slow registry fetch fails the worker's ensure within seconds, not at the load's
timeout; the worker asks the restarted service again and the cold start completes. One that
stays away fails the request once the wait for its comeback is over.

Real storage service (a process of its own, killed with SIGKILL and started again as `sllm up`
would), real worker, NATS and Valkey; the registry is a local HTTP server that drips the
checkpoint's partitions while the test wants the fetch slow.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from libs.cluster import ClusterState
from libs.common.follow import Peers
from libs.protocol import Bus, Keys
from libs.protocol.endpoints import STORAGE_ENSURE, WORKER_GENERATE, WORKER_LOAD
from libs.protocol.errors import UnavailableError
from libs.protocol.messages import EnsureRequest, GenerateRequest, LoadRequest, SamplingParams
from libs.protocol.state import InstanceRecord
from services.worker.app import WorkerService
from services.worker.settings import WorkerSettings
from tests.e2e.events import Events

pytestmark = pytest.mark.integration

NODE, WORKER, MODEL = "n-restart", "w-restart", "tiny"
INDEX = "sllm-index.json"
REPO = Path(__file__).resolve().parents[2]
# Without following the storage service's life the load waited for this long (its whole
# timeout): the bound below is a small part of it.
LOAD_TIMEOUT_S = 120.0
# From the kill to the instance being ready: the death noticed (~1.5 s), the storage service
# started again (a Python process: ~2 s, more on a busy machine), the fetch, the load.
RECOVERY_BOUND_S = 30.0
DRIP = 1024  # bytes per drop while the registry is slow


@dataclass
class Registry:
    url: str
    slow: threading.Event
    seen: list[tuple[float, str]] = field(default_factory=list)  # (monotonic time, path)

    def asked(self, name: str, after: float = 0.0) -> list[float]:
        return [t for t, p in self.seen if p.endswith("/" + name) and t >= after]


@pytest.fixture
def registry(checkpoint: Path) -> Iterator[Registry]:
    """The tiny checkpoint over HTTP; while ``slow`` is set, partitions come a drop at a time
    and never their last byte."""
    slow = threading.Event()
    slow.set()
    seen: list[tuple[float, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append((time.monotonic(), self.path))
            path = checkpoint / self.path.split("/tiny/", 1)[-1]
            if not path.is_file():
                self.send_error(404)
                return
            data = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            sent = 0
            try:
                while path.name != INDEX and slow.is_set():
                    n = min(DRIP, len(data) - 1 - sent)
                    if n > 0:
                        self.wfile.write(data[sent : sent + n])
                        self.wfile.flush()
                        sent += n
                    time.sleep(0.05)
                self.wfile.write(data[sent:])
            except OSError:
                pass  # the storage service was killed: nobody reads any more

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Registry(f"http://127.0.0.1:{server.server_address[1]}/tiny/", slow, seen)
    slow.clear()
    server.shutdown()
    server.server_close()


class StorageProcess:
    """``python -m services.storage`` for NODE, started (again) and killed like `sllm up`'s."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("SLLM_")}
        self.env = {**base, **env, "PYTHONUNBUFFERED": "1"}
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.storage"],
                env=self.env,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
async def storage(
    nats_server: Any, redis_server: Any, root: str, tmp_path: Path, registry: Registry
) -> AsyncIterator[StorageProcess]:
    env = {
        "SLLM_NATS_URL": nats_server.url,
        "SLLM_REDIS_URL": redis_server.url,
        "SLLM_ROOT": root,
        "SLLM_NODE_ID": NODE,
        "SLLM_SSD_DIR": str(tmp_path / "ssd"),
        "SLLM_DRAM_DIR": str(tmp_path / "dram"),
        "SLLM_DRAM_CAPACITY_GB": "0.05",
        "SLLM_BANDWIDTH_PROBE_MB": "0",
        "SLLM_BANDWIDTH_MIN_SAMPLE_MB": "0",
        # The registry is on loopback: allowed explicitly.
        "SLLM_REGISTRY_ALLOW": registry.url,
    }
    proc = StorageProcess(env, tmp_path / "storage.log")
    yield proc
    proc.kill()


@pytest.fixture
async def worker(nats_server: Any, redis_server: Any, root: str) -> AsyncIterator[WorkerService]:
    env = {
        "SLLM_NATS_URL": nats_server.url,
        "SLLM_REDIS_URL": redis_server.url,
        "SLLM_ROOT": root,
        "SLLM_INSTANCE_ID": WORKER,
        "SLLM_NODE_ID": NODE,
        "SLLM_HEARTBEAT_INTERVAL": "0.2",
        "SLLM_HEARTBEAT_TTL": "2",
        "SLLM_LOAD_TIMEOUT": str(LOAD_TIMEOUT_S),
    }
    svc = WorkerService(WorkerSettings.from_env(env))
    await svc.start()
    yield svc
    await svc.stop("test over")


async def storage_alive(redis: aioredis.Redis, keys: Keys, before: object) -> object:
    """The storage service's heartbeat, once there is one other than ``before``."""
    key = keys.alive("storage", f"storage-{NODE}")
    deadline = time.monotonic() + 60
    while True:
        beat = await redis.get(key)
        if beat is not None and beat != before:
            return beat
        assert time.monotonic() < deadline, "the storage service did not come up"
        await asyncio.sleep(0.05)


async def until(pred: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_kill_9_of_storage_mid_fetch_is_retried_on_the_restarted_one_in_seconds(
    bus: Bus,
    redis: aioredis.Redis,
    keys: Keys,
    registry: Registry,
    storage: StorageProcess,
    worker: WorkerService,
) -> None:
    state = ClusterState(redis, keys)
    events = await Events().start(bus)
    storage.start()
    first = await storage_alive(redis, keys, None)

    iid = "i-" + os.urandom(4).hex()
    await state.put_instance(
        InstanceRecord(
            instance_id=iid,
            model=MODEL,
            worker_id=WORKER,
            node_id=NODE,
            status="loading",
            created_at=time.time(),
        )
    )
    assert await state.reserve_worker(WORKER, iid)
    await bus.request(
        WORKER_LOAD,
        LoadRequest(instance_id=iid, model=MODEL, checkpoint_uri=registry.url),
        worker_id=WORKER,
        timeout=10,
    )
    # The fetch is under way (its partitions drip), then the storage service is killed.
    await until(lambda: any(not p.endswith(INDEX) for _, p in registry.seen), "the fetch")
    await asyncio.sleep(0.3)
    storage.kill()
    killed_at = time.monotonic()
    registry.slow.clear()
    # As `sllm up` does, after its first backoff step (0.5 s) and a start that is slow on a
    # busy machine: by then the worker has found the old process gone (no responders).
    await asyncio.sleep(2.0)
    storage.start()
    await storage_alive(redis, keys, first)
    back_at = time.monotonic()

    (ready,) = await events.wait("instance.ready", instance_id=iid, timeout=RECOVERY_BOUND_S)
    took = time.monotonic() - killed_at
    retried = registry.asked(INDEX, after=killed_at)
    assert retried, "the restarted storage service was never asked again"
    print(
        f"storage back {back_at - killed_at:.1f}s after the kill; ensure asked again "
        f"{retried[0] - killed_at:.1f}s after; instance ready {took:.1f}s after"
    )
    assert took < RECOVERY_BOUND_S
    # Asked again as soon as the restarted service was up: no long wait on the dead one.
    assert retried[0] - back_at < 5.0
    assert ready["source_tier"] == "registry"
    assert not events.of("instance.failed", instance_id=iid)

    gen = GenerateRequest(
        request_id="r-" + iid,
        model=MODEL,
        prompt_token_ids=[904, 594, 330, 14],
        params=SamplingParams(max_tokens=4, temperature=0.0),
    )
    async with await bus.stream(WORKER_GENERATE, gen, worker_id=WORKER, timeout=30) as reader:
        tokens = [i for c in [c async for c in reader] for i in c.token_ids]
    assert len(tokens) == 4


async def test_an_ensure_to_a_storage_service_that_stops_and_stays_away_fails_in_seconds(
    bus: Bus, redis: aioredis.Redis, keys: Keys, registry: Registry, storage: StorageProcess
) -> None:
    storage.start()
    await storage_alive(redis, keys, None)
    peers = Peers(bus, redis, keys, "storage", comeback_s=2.0)
    req = EnsureRequest(model=MODEL, checkpoint_uri=registry.url, tier="ssd")
    ensure = asyncio.create_task(
        peers.request(STORAGE_ENSURE, req, timeout=LOAD_TIMEOUT_S, node_id=NODE)
    )
    await until(lambda: any(not p.endswith(INDEX) for _, p in registry.seen), "the fetch")
    storage.kill()
    killed_at = time.monotonic()
    with pytest.raises(UnavailableError) as err:
        await ensure
    took = time.monotonic() - killed_at
    print(f"ensure failed {took:.1f}s after the kill: {err.value}")
    assert "within 2s" in err.value.message  # gone, and did not come back
    # The death noticed (~1.5 s) plus the wait for a comeback; not the request's timeout.
    assert took < 8.0
