"""`sllm up --ha`: 3 NATS servers and Valkey with a replica and 3 sentinels. A NATS server and
then the Valkey primary are killed (-9): requests are answered throughout, the sentinels fail
over, `sllm up` brings the old primary back as a replica, and a new deployment (which needs
the store) works after the failover."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import openai
import psutil
import pytest
from redis.sentinel import MasterNotFoundError, Sentinel

from libs.common.redis_client import parse_sentinel_url

from .cluster import UpCluster, up_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpCluster]:
    # 20 ms a token: a 150-token stream lasts seconds, long enough to kill a server under it.
    with up_cluster(
        tmp_path_factory.mktemp("ha"), nodes=1, extra_args=("--ha",), SLLM_DECODE_DELAY="0.02"
    ) as c:
        yield c


def _children(cluster: UpCluster, word: str) -> list[psutil.Process]:
    assert cluster.proc is not None
    out = []
    for p in psutil.Process(cluster.proc.pid).children():
        try:
            if word in " ".join(p.cmdline()) or p.name() == word:
                out.append(p)
        except psutil.Error:
            pass
    return out


def _primary_port(cluster: UpCluster) -> int | None:
    """The port of the server the sentinels name primary; None while they name none."""
    url = parse_sentinel_url(cluster.redis_url)
    try:
        _, port = Sentinel(list(url.sentinels), socket_timeout=2).discover_master(url.service)
    except MasterNotFoundError:
        return None  # just after the primary died
    return int(port)


def _nats_server_of(cluster: UpCluster, module: str) -> psutil.Process:
    """The nats-server the service ``module`` is connected to (by its TCP connection)."""
    (service,) = [p for p in _children(cluster, module) if p.cmdline()[-1] == module]
    servers = {}
    for p in _children(cluster, "nats-server"):
        cmd = p.cmdline()
        servers[int(cmd[cmd.index("-p") + 1])] = p
    ports = {c.raddr.port for c in service.net_connections(kind="tcp") if c.raddr}
    (port,) = ports & servers.keys()
    return servers[port]


def _ask(client: openai.OpenAI) -> str:
    out = client.completions.create(model="demo", prompt="Hello", max_tokens=8, temperature=0)
    return out.choices[0].text


def test_a_nats_server_and_the_valkey_primary_die_and_serving_goes_on(cluster: UpCluster) -> None:
    assert len(_children(cluster, "nats-server")) == 3
    assert cluster.redis_url.startswith("redis+sentinel://")
    client = openai.OpenAI(base_url=cluster.base_url + "/v1", api_key="none", max_retries=0)
    reference = _ask(client)

    _children(cluster, "nats-server")[0].kill()
    assert _ask(client) == reference

    old = _primary_port(cluster)
    assert old is not None
    (primary,) = [
        p
        for p in _children(cluster, "valkey-server")
        if f":{old}" in " ".join(p.cmdline()) and "sentinel" not in " ".join(p.cmdline())
    ]
    primary.kill()
    assert _ask(client) == reference  # warm: the store is not on this path
    deadline = time.monotonic() + 30
    while _primary_port(cluster) in (old, None):
        assert time.monotonic() < deadline, "the sentinels never failed over"
        time.sleep(0.2)
    # A deployment needs the store: it works on the new primary.
    r = httpx.post(
        cluster.base_url + "/v1/deployments",
        json={"name": "after", "checkpoint_uri": cluster.demo_dir.as_uri()},
        timeout=30,
    )
    assert r.status_code == 201, r.text
    # `sllm up` brings the old primary back, as a replica, and every NATS server back.
    deadline = time.monotonic() + 30
    while not (
        len(_children(cluster, "nats-server")) == 3
        and any(f":{old}" in " ".join(p.cmdline()) for p in _children(cluster, "valkey-server"))
    ):
        assert time.monotonic() < deadline, cluster.log()[-3000:]
        time.sleep(0.2)
    assert _primary_port(cluster) not in (old, None)
    assert _ask(client) == reference
    client.close()


def test_a_stream_whose_routers_nats_server_dies_completes(cluster: UpCluster) -> None:
    """The router's connection moves to another server; frames in flight through the dead one
    are lost, the router notices the gap within seconds and resumes the generation on the same
    worker: the client's stream is the uninterrupted one."""
    client = openai.OpenAI(base_url=cluster.base_url + "/v1", api_key="none", max_retries=0)
    prompt = "Once upon a time"
    whole = (
        client.completions.create(model="demo", prompt=prompt, max_tokens=150, temperature=0)
        .choices[0]
        .text
    )
    victim = _nats_server_of(cluster, "services.router")
    parts: list[str] = []
    t0 = time.monotonic()
    chunks = client.completions.create(
        model="demo", prompt=prompt, max_tokens=150, temperature=0, stream=True
    )
    for n, chunk in enumerate(chunks):
        parts.extend(c.text for c in chunk.choices)
        if n == 20:
            victim.kill()
    took = time.monotonic() - t0
    assert "".join(parts) == whole
    assert took < 30, took
    client.close()
