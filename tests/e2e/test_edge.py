"""`sllm up` with keys, as a user runs it: the openai SDK with an inference key, deployments
with the admin key only, hostile checkpoint URIs refused without an oracle, and a 400 MB body
refused with the router process's memory flat."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from libs.demo import write_demo_model

from .cluster import UpCluster, up_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

INFER, ADMIN = "e2e-infer-key", "e2e-admin-key"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpCluster]:
    with up_cluster(
        tmp_path_factory.mktemp("edge"),
        nodes=1,
        SLLM_API_KEYS=INFER,
        SLLM_ADMIN_KEYS=ADMIN,
        SLLM_BANDWIDTH_PROBE_MB="0",
    ) as c:
        yield c


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _router(cluster: UpCluster) -> psutil.Process:
    assert cluster.proc is not None
    for proc in psutil.Process(cluster.proc.pid).children(recursive=True):
        if "services.router" in proc.cmdline():
            return proc
    raise AssertionError("no router process")


def test_inference_key_serves_and_only_the_admin_key_deploys(
    cluster: UpCluster, tmp_path: Path
) -> None:
    with openai.OpenAI(base_url=cluster.base_url + "/v1", api_key=INFER, max_retries=0) as c:
        reply = c.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "Hello!"}], max_tokens=4
        )
        assert reply.choices[0].message.content
    model = write_demo_model(tmp_path / "other", seed=1)
    spec = {"name": "other", "checkpoint_uri": Path(model).as_uri()}
    url = cluster.base_url + "/v1/deployments"
    assert httpx.post(url, json=spec, timeout=30).status_code == 401
    refused = httpx.post(url, json=spec, headers=_auth(INFER), timeout=30)
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["type"] == "permission_error"
    created = httpx.post(url, json=spec, headers=_auth(ADMIN), timeout=30)
    assert created.status_code == 201, created.text
    done = httpx.post(
        cluster.base_url + "/v1/completions",
        json={"model": "other", "prompt": "Once", "max_tokens": 2},
        headers=_auth(INFER),
        timeout=240,
    )
    assert done.status_code == 200, done.text


@pytest.mark.parametrize(
    "uri", ["file:///etc/passwd", "file:///proc/self/environ", "http://169.254.169.254/"]
)
def test_a_hostile_checkpoint_uri_is_400_even_for_an_admin(cluster: UpCluster, uri: str) -> None:
    resp = httpx.post(
        cluster.base_url + "/v1/deployments",
        json={"name": "evil", "checkpoint_uri": uri},
        headers=_auth(ADMIN),
        timeout=30,
    )
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == "checkpoint_uri"


def test_a_symlink_out_of_the_registry_is_refused_at_deploy_without_saying_where(
    cluster: UpCluster, tmp_path: Path
) -> None:
    (tmp_path / "sneaky").symlink_to("/etc")  # lexically inside the allowed directory
    spec = {"name": "sneaky", "checkpoint_uri": (tmp_path / "sneaky").as_uri()}
    resp = httpx.post(
        cluster.base_url + "/v1/deployments", json=spec, headers=_auth(ADMIN), timeout=60
    )
    # The storage service checks the checkpoint when it is deployed: refused there and then.
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert (error["param"], error["code"]) == ("checkpoint_uri", "invalid_checkpoint")
    assert "refused by the registry allow-list" in error["message"]
    assert "/etc" not in error["message"].replace(spec["checkpoint_uri"], "")
    listed = httpx.get(cluster.base_url + "/v1/deployments/sneaky", headers=_auth(ADMIN))
    assert listed.status_code == 404  # nothing stored


def test_a_400_mb_body_is_413_and_the_router_process_stays_flat(cluster: UpCluster) -> None:
    router = _router(cluster)
    base = router.memory_info().rss
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], router.memory_info().rss)

    def body() -> Iterator[bytes]:
        block = b"x" * (1 << 20)
        for _ in range(400):
            yield block

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        resp = httpx.post(
            cluster.base_url + "/v1/deployments",
            content=body(),
            headers=_auth(ADMIN),
            timeout=120,
        )
    finally:
        done.set()
        thread.join()
    assert resp.status_code == 413, resp.text
    growth = peak[0] - base
    print(f"router RSS {base / 2**20:.0f} MiB, peak +{growth / 2**20:.1f} MiB")
    assert growth < 32 << 20, f"router RSS grew by {growth >> 20} MiB"
