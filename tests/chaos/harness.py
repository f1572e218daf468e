"""The harness of the kill tests (`test_kills.py`): one `sllm up` (1 node x 2 CPU workers; no
prefetch, so a cold start fetches the checkpoint from the registry), an HTTP registry that drips
the checkpoint so that a cold start lasts about a second, the uninterrupted answers, and the
kill / restart / heal checks. The openai SDK is the client, with no retries of its own."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import re
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

import httpx
import openai
import psutil
import pytest
import redis
from openai.types.chat import ChatCompletionMessageParam

from libs.protocol import Keys

from ..e2e.cluster import UpCluster, up_cluster

ROUNDS = int(os.environ.get("SLLM_CHAOS_ROUNDS", "1"))
SEED = int(os.environ.get("SLLM_CHAOS_SEED", "0")) or random.SystemRandom().randrange(1, 1 << 31)
# The victims (by the service kind of their heartbeat): `sllm up`'s name for the child (in
# its log) and the module it runs.
VICTIMS = {
    "scheduler": ("scheduler", "services.scheduler"),
    "storage": ("storage/node-0", "services.storage"),
    "router": ("router", "services.router"),
}
# From the restart `sllm up` announced (its backoff: 0.5 s after a first crash, doubling for
# each crash within a minute) to the new process serving: a Python service's start on two
# cores shared with the rest of the cluster (measured 0.6-1.6 s past the delay).
RESTART_BOUND_S = 20.0
# From the killed service being back to every deployment answering right: the router's first
# request, a cold start interrupted by the kill finishing, one warm request per deployment.
HEAL_BOUND_S = 15.0
REQUEST_TIMEOUT_S = 60.0
SHORT_TOKENS = 12
STREAM_TOKENS = 200
MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Say something about the sea."}
]
PROMPT = "Once upon a time"
# How fast the registry sends a partition: the demo's (2.1 MB) takes about a second.
DRIP_BYTES, DRIP_PAUSE_S = 32 << 10, 0.015
# A dropped connection, as the client sees it (the SDK wraps some; a stream raises httpx's).
DROPPED = (openai.APIConnectionError, httpx.TransportError)


@dataclass(frozen=True)
class Reference:
    """The uninterrupted answers, and how long an uninterrupted cold start takes."""

    short: str
    stream: list[str]  # the streamed completion's text chunks
    cold_s: float

    @property
    def long(self) -> str:
        return "".join(self.stream)


@dataclass
class Kill:
    victim: str
    pid: int
    at: float  # monotonic
    wall: float  # time.time(), to tell the restarted process's heartbeat from the old one's
    log_mark: int  # how much of `sllm up`'s log was written before the kill


class Registry:
    """An HTTP registry serving one checkpoint directory (``dir``, filled in later) as
    ``url``, its partitions a drop at a time (`DRIP_BYTES` every `DRIP_PAUSE_S`)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = directory / self.path.rsplit("/", 1)[-1]
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                step = DRIP_BYTES if path.suffix == ".bin" else len(data)
                with contextlib.suppress(OSError):  # the storage service was killed
                    for at in range(0, len(data), step):
                        self.wfile.write(data[at : at + step])
                        self.wfile.flush()
                        if step < len(data):
                            time.sleep(DRIP_PAUSE_S)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/demo/"
        Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    r = Registry(tmp_path_factory.mktemp("registry"))
    yield r
    r.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, registry: Registry) -> Iterator[UpCluster]:
    tmp = tmp_path_factory.mktemp("kills")
    with up_cluster(
        tmp,
        nodes=1,
        workers_per_node=2,
        SLLM_REGISTRY_ALLOW=f"{tmp.parent},{registry.url}",
        SLLM_PREFETCH_REPLICAS="0",
        SLLM_BANDWIDTH_PROBE_MB="0",
        # 10 ms a token: a stream lasts seconds, long enough to outlive a restart.
        SLLM_DECODE_DELAY="0.01",
    ) as c:
        yield c


@pytest.fixture(scope="module")
def client(cluster: UpCluster) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(base_url=cluster.base_url + "/v1", api_key="none", max_retries=0)
    yield c
    c.close()


@pytest.fixture(scope="module")
def reference(cluster: UpCluster, client: openai.OpenAI, registry: Registry) -> Reference:
    short = ask(client, "demo")
    whole = stream(client)
    assert not whole.dropped
    chunks = whole.chunks
    assert len(chunks) > 40, chunks  # long enough to cut into
    # The registry serves the demo checkpoint as the storage service stored it (the sllm
    # format, which an HTTP registry holds).
    (stored,) = (cluster.tmp / "state" / "node-0" / "ssd").glob("demo-*")
    for f in stored.iterdir():
        if not f.name.startswith("."):
            shutil.copy(f, registry.dir / f.name)
    deploy(cluster, "cold-reference", registry.url)
    t0 = time.monotonic()
    assert ask(client, "cold-reference") == short
    cold_s = time.monotonic() - t0
    undeploy(cluster, "cold-reference")
    print(
        f"uninterrupted cold start {cold_s:.2f}s; stream of {len(chunks)} chunks; "
        f"SLLM_CHAOS_SEED={SEED} repeats these kill points"
    )
    return Reference(short, chunks, cold_s)


# --- the client ---------------------------------------------------------------------------


def ask(client: openai.OpenAI, model: str) -> str:
    out = client.chat.completions.create(
        model=model,
        messages=MESSAGES,
        max_tokens=SHORT_TOKENS,
        temperature=0,
        timeout=REQUEST_TIMEOUT_S,
    )
    assert out.choices[0].finish_reason in ("length", "stop"), out
    return out.choices[0].message.content or ""


@dataclass
class Streamed:
    chunks: list[str]  # the text chunks that arrived
    dropped: bool  # the connection dropped before the end


def stream(client: openai.OpenAI, on_chunk: Callable[[int], object] = lambda n: None) -> Streamed:
    """A greedy streamed completion; ``on_chunk(n)`` runs after the n-th chunk."""
    parts: list[str] = []
    chunks = client.completions.create(
        model="demo",
        prompt=PROMPT,
        max_tokens=STREAM_TOKENS,
        temperature=0,
        stream=True,
        timeout=REQUEST_TIMEOUT_S,
    )
    try:
        for n, chunk in enumerate(chunks):
            text = "".join(c.text for c in chunk.choices)
            if text:
                parts.append(text)
            on_chunk(n)
    except DROPPED:
        return Streamed(parts, dropped=True)
    return Streamed(parts, dropped=False)


def deploy(cluster: UpCluster, name: str, uri: str) -> None:
    r = httpx.post(
        cluster.base_url + "/v1/deployments",
        json={"name": name, "checkpoint_uri": uri},
        timeout=30,
    )
    assert r.status_code == 201, r.text


def undeploy(cluster: UpCluster, name: str) -> None:
    """Delete ``name`` and wait until its worker is free again (the next cold start gets it)."""
    r = httpx.delete(cluster.base_url + f"/v1/deployments/{name}", timeout=60)
    assert r.status_code == 200, r.text
    keys = Keys(cluster.root)
    store = state(cluster)

    def a_worker_free() -> bool:
        workers = [str(w) for w in store.smembers(keys.workers)]
        return any(not store.hget(keys.worker(w), "instance_id") for w in workers)

    wait(a_worker_free, f"the worker of {name} freed", 60)


def serving_every_deployment(client: openai.OpenAI, reference: Reference) -> list[str]:
    """Every deployment answers, and right; returns their names. Any failure is raised."""
    names = sorted(m.id for m in client.models.list(timeout=REQUEST_TIMEOUT_S))
    assert "demo" in names, names
    for name in names:
        assert ask(client, name) == reference.short, name
    return names


# --- the processes ------------------------------------------------------------------------


@functools.cache
def state(cluster: UpCluster) -> redis.Redis:
    """The cluster's Valkey (one client per cluster)."""
    return redis.Redis.from_url(cluster.redis_url, socket_timeout=5, decode_responses=True)


def process(cluster: UpCluster, victim: str) -> psutil.Process | None:
    """The live process of ``victim`` (not one that died and is not reaped yet)."""
    assert cluster.proc is not None
    module = VICTIMS[victim][1]
    for c in psutil.Process(cluster.proc.pid).children():
        with contextlib.suppress(psutil.Error):
            if c.cmdline()[-2:] == ["-m", module] and c.status() != psutil.STATUS_ZOMBIE:
                return c
    return None


def kill(cluster: UpCluster, victim: str) -> Kill:
    proc = process(cluster, victim)
    assert proc is not None, f"no {victim} process"
    mark = len(cluster.log())
    wall = time.time()
    proc.kill()
    return Kill(victim, proc.pid, time.monotonic(), wall, mark)


def announced_delay(cluster: UpCluster, k: Kill) -> float:
    """The restart delay `sllm up` announced for the killed process."""
    name = re.escape(VICTIMS[k.victim][0])
    pattern = re.compile(rf"sllm: {name} .*restarting in ([0-9.]+)s")
    found: list[float] = []

    def announced() -> bool:
        m = pattern.search(cluster.log()[k.log_mark :])
        if m:
            found.append(float(m.group(1)))
        return bool(m)

    wait(announced, f"`sllm up` to notice the {k.victim}'s death", 10)
    return found[0]


def back(cluster: UpCluster, k: Kill) -> bool:
    """The killed service runs again: a new process that serves (the router: accepts
    connections; the others: a heartbeat of a life that began after the kill)."""
    proc = process(cluster, k.victim)
    if proc is None or proc.pid == k.pid:
        return False
    if k.victim == "router":
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", cluster.port), 1):
            return True
        return False
    store = state(cluster)
    pattern = Keys(cluster.root).alive_pattern(k.victim)
    for key in store.scan_iter(match=pattern):
        beat = store.get(key)
        if beat and json.loads(str(beat))["started_at"] > k.wall:
            return True
    return False


def restarted(cluster: UpCluster, k: Kill) -> tuple[float, float]:
    """Waits for the killed service to be back; returns (announced delay, seconds from the
    kill to back)."""
    delay = announced_delay(cluster, k)
    wait(lambda: back(cluster, k), f"the {k.victim} back", delay + RESTART_BOUND_S, since=k.at)
    took = time.monotonic() - k.at
    assert took < delay + RESTART_BOUND_S, took
    return delay, took


def wait(pred: Callable[[], bool], what: str, timeout: float, since: float | None = None) -> float:
    """Polls ``pred`` (errors of the store count as "not yet") until it holds; its seconds."""
    t0 = time.monotonic() if since is None else since
    while True:
        with contextlib.suppress(redis.RedisError, OSError, psutil.Error):
            if pred():
                return time.monotonic() - t0
        assert time.monotonic() - t0 < timeout, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(0.05)


def rng(*case: object) -> random.Random:
    return random.Random(f"{SEED}:{':'.join(map(str, case))}")
