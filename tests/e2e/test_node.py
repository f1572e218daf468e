"""`sllm node` joins a running cluster as a second host: its storage service and worker
register, a model the cluster's own worker has no room for is placed on it and answers right,
and stopping it takes its services out of the cluster."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import redis

from libs.protocol import Keys

from .cluster import SLLM, UpCluster, up_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NODE = "node-x"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpCluster]:
    with up_cluster(tmp_path_factory.mktemp("node"), nodes=1, workers_per_node=1) as c:
        yield c


def _wait(pred: object, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not (callable(pred) and pred()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _ask(client: openai.OpenAI, model: str) -> str:
    out = client.completions.create(model=model, prompt="Hello", max_tokens=8, temperature=0)
    return out.choices[0].text


def test_a_node_joins_serves_and_leaves(cluster: UpCluster, tmp_path: Path) -> None:
    store = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
    keys = Keys(cluster.root)
    client = openai.OpenAI(base_url=cluster.base_url + "/v1", api_key="none", max_retries=0)
    reference = _ask(client, "demo")  # the cluster's only worker now hosts the demo
    log_path = tmp_path / "node.log"
    env = {
        **cluster.service_env(),
        "SLLM_REGISTRY_ALLOW": str(cluster.demo_dir.parent),
        "SLLM_DRAM_DIR": str(tmp_path / "dram"),
    }
    argv = [SLLM, "node", "--node-id", NODE, "--devices", "cpu"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*argv, "--data-dir", str(tmp_path / "data")],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait(lambda: "is up" in log_path.read_text(), "`sllm node` to be up", 120)
        assert store.exists(keys.alive("storage", f"storage-{NODE}"))
        assert store.exists(keys.alive("worker", f"{NODE}-w0"))
        # A second deployment: the cluster's own worker is busy with the demo, so the
        # scheduler places it on the new host, which fetches the checkpoint itself.
        r = httpx.post(
            cluster.base_url + "/v1/deployments",
            json={"name": "joined", "checkpoint_uri": cluster.demo_dir.as_uri()},
            timeout=30,
        )
        assert r.status_code == 201, r.text
        assert _ask(client, "joined") == reference
        ids = store.smembers(keys.model_instances("joined"))
        hosts = {json.loads(str(store.get(keys.instance(str(i)))))["worker_id"] for i in ids}
        assert hosts == {f"{NODE}-w0"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log_path.read_text()[-3000:]
        _wait(
            lambda: not store.exists(keys.alive("worker", f"{NODE}-w0")),
            "the node's worker to leave",
            30,
        )
        assert _ask(client, "demo") == reference  # the cluster serves on
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        client.close()
