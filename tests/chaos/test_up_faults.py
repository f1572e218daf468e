"""Faults of a running `sllm up`, as an operator meets them, healed without an operator.

One cluster (1 node x 2 CPU workers) for the module, driven with the openai SDK:
- a worker crash-looping (killed again each time it comes back, seven times in a row) is
  restarted with growing delays while the rest of the cluster serves on, and comes back;
- `kill -9` of the embedded Valkey: requests in the outage are served from what the router last
  read, `sllm up` restarts it and its append-only file keeps every deployment;
- Valkey restarted without its data: the services write back what they own (deployments,
  workers, instances, tiers) and every deployment serves again within a bound.

``SLLM_CHAOS_ROUNDS`` (default 1; `make chaos` sets more) repeats the Valkey faults.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import psutil
import pytest
import redis

from libs.protocol import Keys

from ..e2e.cluster import UpCluster, up_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.chaos, pytest.mark.slow]

ROUNDS = int(os.environ.get("SLLM_CHAOS_ROUNDS", "1"))
# How long the cluster may take to serve again after the store came back empty: a few
# heartbeats (1 s) for the services to notice and re-publish, plus the router's cache.
HEAL_BOUND_S = 15.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpCluster]:
    with up_cluster(tmp_path_factory.mktemp("chaos"), nodes=1, workers_per_node=2) as c:
        yield c


@pytest.fixture(scope="module")
def client(cluster: UpCluster) -> openai.OpenAI:
    return openai.OpenAI(base_url=cluster.base_url + "/v1", api_key="none", max_retries=0)


def ask(client: openai.OpenAI) -> str:
    out = client.chat.completions.create(
        model="demo",
        messages=[{"role": "user", "content": "Say something about the sea."}],
        max_tokens=8,
        temperature=0,
        timeout=120,
    )
    assert out.choices[0].finish_reason in ("length", "stop")
    return out.choices[0].message.content or ""


def store(cluster: UpCluster) -> redis.Redis:
    return redis.Redis.from_url(cluster.redis_url, socket_timeout=2, decode_responses=True)


def valkey(cluster: UpCluster) -> psutil.Process | None:
    """`sllm up`'s valkey-server process; None while there is none."""
    assert cluster.proc is not None
    for c in psutil.Process(cluster.proc.pid).children():
        with contextlib.suppress(psutil.Error):
            if "valkey-server" in " ".join(c.cmdline()) or "redis-server" in c.name():
                return c
    return None


def restarted(cluster: UpCluster, old: psutil.Process) -> bool:
    new = valkey(cluster)
    return new is not None and new.pid != old.pid and bool(store(cluster).ping())


def nats_server(cluster: UpCluster) -> psutil.Process | None:
    assert cluster.proc is not None
    for c in psutil.Process(cluster.proc.pid).children():
        with contextlib.suppress(psutil.Error):
            if c.name() == "nats-server":
                return c
    return None


def kill_valkey(cluster: UpCluster) -> psutil.Process:
    old = valkey(cluster)
    assert old is not None
    old.kill()
    old.wait(10)
    return old


def hosting_worker(cluster: UpCluster) -> str:
    keys = Keys(cluster.root)
    r = store(cluster)
    for wid in sorted(str(m) for m in r.smembers(keys.workers)):
        if r.hget(keys.worker(wid), "instance_id"):
            return wid
    raise AssertionError("no worker hosts an instance")


def wait_for(pred: object, what: str, timeout: float) -> float:
    t0 = time.monotonic()
    while True:
        try:
            if callable(pred) and pred():
                return time.monotonic() - t0
        except (redis.RedisError, OSError, openai.APIError):
            pass
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_crash_looping_worker_never_stops_the_cluster(
    cluster: UpCluster, client: openai.OpenAI
) -> None:
    reference = ask(client)
    victim = next(w for w in ("node-0-w0", "node-0-w1") if w != hosting_worker(cluster))
    keys = Keys(cluster.root)
    killed: set[int] = set()
    for _ in range(7):  # the old launcher stopped everything after the sixth crash in a minute

        def fresh_victim() -> bool:
            try:
                proc = cluster.child(victim)
            except AssertionError:
                return False
            if proc.pid in killed:
                return False
            killed.add(proc.pid)
            proc.kill()
            return True

        wait_for(fresh_victim, f"{victim} to be started again", timeout=60)
        assert ask(client) == reference  # the other worker serves throughout
    assert cluster.proc is not None
    assert cluster.proc.poll() is None, cluster.log()[-3000:]
    assert "crashes in a row" in cluster.log()
    # Left alone, it comes back (the last delay is 16 s) and registers as alive.
    wait_for(lambda: store(cluster).exists(keys.alive("worker", victim)), "its return", 60)
    assert ask(client) == reference


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_valkey_killed_restarts_with_its_data(
    cluster: UpCluster, client: openai.OpenAI, round_: int
) -> None:
    reference = ask(client)
    models = [m.id for m in client.models.list()]
    old = kill_valkey(cluster)
    # The outage: a warm request still has a worker to go to.
    assert ask(client) == reference
    wait_for(lambda: restarted(cluster, old), "valkey back", 30)
    assert [m.id for m in client.models.list()] == models  # kept by the append-only file
    assert ask(client) == reference


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_valkey_restarted_without_its_data_heals_without_an_operator(
    cluster: UpCluster, client: openai.OpenAI, round_: int
) -> None:
    reference = ask(client)
    old = kill_valkey(cluster)
    data = cluster.tmp / "state" / "redis"
    for path in Path(data).glob("appendonly*"):  # before `sllm up` restarts it (0.5 s+)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    wait_for(lambda: restarted(cluster, old), "valkey back", 30)

    def serving() -> bool:
        return "demo" in [m.id for m in client.models.list()] and ask(client) == reference

    took = wait_for(serving, "the demo deployment serving again", timeout=HEAL_BOUND_S)
    print(f"serving again {took:.1f}s after valkey came back empty")
    keys = Keys(cluster.root)
    r = store(cluster)

    def records_back() -> bool:
        workers = sorted(str(w) for w in r.smembers(keys.workers))
        return (
            bool(r.exists(keys.deployment("demo")))
            and workers == ["node-0-w0", "node-0-w1"]
            and bool(r.exists(keys.node("node-0")))
            and bool(r.hgetall(keys.locality("node-0", "ssd")))
        )

    took = wait_for(records_back, "every record written back", timeout=HEAL_BOUND_S)
    print(f"every record back {took:.1f}s later")


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_nats_killed_mid_stream_the_stream_ends_within_seconds_and_serving_resumes(
    cluster: UpCluster, client: openai.OpenAI, round_: int
) -> None:
    body = {"model": "demo", "prompt": "Once upon a time", "max_tokens": 300, "temperature": 0}
    reference = client.completions.create(**body, timeout=120).choices[0].text  # type: ignore[call-overload]
    old = nats_server(cluster)
    assert old is not None
    parts: list[str] = []
    t_kill = 0.0
    outcome = "complete"
    stream = client.completions.create(**body, stream=True, timeout=120)  # type: ignore[call-overload]
    try:
        for n, chunk in enumerate(stream):
            parts.append(chunk.choices[0].text if chunk.choices else "")
            if n == 20:
                old.kill()
                t_kill = time.monotonic()
    except openai.APIError:
        outcome = "failed"
    ended_after = time.monotonic() - t_kill
    print(f"stream {outcome} {ended_after:.1f}s after the kill")
    # The client's view: the stream is either the whole answer or an error within seconds,
    # never a hang and never a wrong text.
    if outcome == "complete":
        assert "".join(parts) == reference
    assert ended_after < 20.0
    took = wait_for(lambda: ask(client) is not None, "serving after the NATS restart", 30)
    print(f"serving again {took:.1f}s later")
    new = nats_server(cluster)
    assert new is not None
    assert new.pid != old.pid
