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
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from libs.cluster import ClusterState
from libs.common.follow import Peers
from libs.protocol import Bus, Keys
from libs.protocol.endpoints import STORAGE_ENSURE, WORKER_GENERATE
from libs.protocol.errors import UnavailableError
from libs.protocol.messages import EnsureRequest, GenerateRequest, SamplingParams
from services.worker.app import WorkerService
from tests.e2e.events import Events

from .probes import next_heartbeat, until
from .service_processes import ServiceProcess, request_load, storage_env, worker_fixture

pytestmark = pytest.mark.integration

NODE, WORKER, MODEL = "n-restart", "w-restart", "tiny"
INDEX = "sllm-index.json"
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

    def fetching(self) -> bool:
        """Asked for a partition: a fetch is under way."""
        return any(not p.endswith(INDEX) for _, p in self.seen)


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


@pytest.fixture
def storage(
    nats_server: Any, redis_server: Any, root: str, tmp_path: Path, registry: Registry
) -> Iterator[ServiceProcess]:
    """``python -m services.storage`` for NODE, started (again) and killed like `sllm up`'s."""
    env = storage_env(
        nats_server.url,
        redis_server.url,
        root,
        node=NODE,
        ssd=tmp_path / "ssd",
        dram=tmp_path / "dram",
        allow=registry.url,  # the registry is on loopback: allowed explicitly
        SLLM_DRAM_CAPACITY_GB="0.05",
        SLLM_BANDWIDTH_MIN_SAMPLE_MB="0",
    )
    with ServiceProcess("services.storage", env, tmp_path / "storage.log") as p:
        yield p


worker = worker_fixture(WORKER, NODE, load_timeout_s=LOAD_TIMEOUT_S)


async def storage_alive(redis: aioredis.Redis, keys: Keys, before: object) -> object:
    """The storage service's heartbeat, once there is one other than ``before``."""
    key = keys.alive("storage", f"storage-{NODE}")
    return await next_heartbeat(redis, key, before, "the storage service")


async def test_kill_9_of_storage_mid_fetch_is_retried_on_the_restarted_one_in_seconds(
    bus: Bus,
    redis: aioredis.Redis,
    keys: Keys,
    registry: Registry,
    storage: ServiceProcess,
    worker: WorkerService,
) -> None:
    state = ClusterState(redis, keys)
    events = await Events().start(bus)
    storage.start()
    first = await storage_alive(redis, keys, None)

    iid = "i-" + os.urandom(4).hex()
    await request_load(
        bus, state, iid=iid, model=MODEL, worker_id=WORKER, node=NODE, uri=registry.url
    )
    # The fetch is under way (its partitions drip), then the storage service is killed.
    await until(registry.fetching, "the fetch", timeout=60)
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
    bus: Bus, redis: aioredis.Redis, keys: Keys, registry: Registry, storage: ServiceProcess
) -> None:
    storage.start()
    await storage_alive(redis, keys, None)
    peers = Peers(bus, redis, keys, "storage", comeback_s=2.0)
    req = EnsureRequest(model=MODEL, checkpoint_uri=registry.url, tier="ssd")
    ensure = asyncio.create_task(
        peers.request(STORAGE_ENSURE, req, timeout=LOAD_TIMEOUT_S, node_id=NODE)
    )
    await until(registry.fetching, "the fetch", timeout=60)
    storage.kill()
    killed_at = time.monotonic()
    with pytest.raises(UnavailableError) as err:
        await ensure
    took = time.monotonic() - killed_at
    print(f"ensure failed {took:.1f}s after the kill: {err.value}")
    assert "within 2s" in err.value.message  # gone, and did not come back
    # The death noticed (~1.5 s) plus the wait for a comeback; not the request's timeout.
    assert took < 8.0
