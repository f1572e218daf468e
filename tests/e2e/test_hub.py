"""A model deployed by its Hugging Face Hub id, through `sllm up` as a user runs it: the Hub is a
local stand-in (`tests.hub_server`) that ``HF_ENDPOINT`` points at; the storage service
downloads the repository, converts it, and the model answers the openai SDK."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from libs.demo import write_demo_model
from tests.hub_server import HubRepo, HubServer

from .cluster import UpCluster, up_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny model, a LoRA adapter of it, and the two merged (the adapter's reference)."""
    from libs.demo.adapters import write_merged_model, write_random_lora

    root = tmp_path_factory.mktemp("hub")
    model = Path(write_demo_model(root / "tiny", "tiny", seed=5))
    lora = write_random_lora(model, root / "tiny-lora", r=4)
    return {"tiny": model, "lora": lora, "merged": write_merged_model(model, lora, root / "m")}


@pytest.fixture(scope="module")
def hub(models: dict[str, Path]) -> Iterator[HubServer]:
    repos = {"org/tiny": HubRepo(models["tiny"]), "org/tiny-lora": HubRepo(models["lora"])}
    with HubServer(repos) as server:
        yield server


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, hub: HubServer) -> Iterator[UpCluster]:
    tmp = tmp_path_factory.mktemp("hub-up")
    with up_cluster(
        tmp,
        nodes=1,
        SLLM_BANDWIDTH_PROBE_MB="0",
        SLLM_REGISTRY_ALLOW="hf://org/",
        HF_ENDPOINT=hub.url,
        HF_HUB_OFFLINE="0",  # the tests' conftest turns the Hub off; this one is local
        HF_HOME=str(tmp / "hf-home"),
        HF_HUB_CACHE=str(tmp / "hub-cache"),
    ) as c:
        yield c


def _wait_ready(cluster: UpCluster, name: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = httpx.get(
            cluster.base_url + f"/v1/deployments/{name}", timeout=30
        ).json()
        if body.get("status") in ("ready", "failed") or time.monotonic() > deadline:
            return body
        time.sleep(0.3)


def test_a_model_deployed_by_its_hub_id_is_downloaded_and_answers(
    cluster: UpCluster, hub: HubServer
) -> None:
    # A plain Hugging Face id, as users write it, is stored as an hf:// URI.
    body = {"name": "tiny-hub", "checkpoint_uri": "org/tiny"}
    resp = httpx.post(cluster.base_url + "/v1/deployments", json=body, timeout=120)
    assert resp.status_code == 201, resp.text
    assert resp.json()["checkpoint_uri"] == "hf://org/tiny"
    ready = _wait_ready(cluster, "tiny-hub")
    assert ready["status"] == "ready", ready
    assert any(p.endswith("/model.safetensors") for p in hub.downloads())
    with openai.OpenAI(base_url=cluster.base_url + "/v1", api_key="x", max_retries=0) as c:
        reply = c.chat.completions.create(
            model="tiny-hub", messages=[{"role": "user", "content": "Hello!"}], max_tokens=4
        )
    assert reply.choices[0].message.content
    # Downloaded once: the preparation's copy serves the load.
    assert len([p for p in hub.downloads() if p.endswith("/model.safetensors")]) == 1


def test_an_adapter_deployed_by_its_hub_id_answers_like_its_merged_model(
    cluster: UpCluster, hub: HubServer, models: dict[str, Path]
) -> None:
    from .reference import Reference

    body = {"name": "tiny-lora", "base": "tiny-hub", "adapter_uri": "org/tiny-lora"}
    resp = httpx.post(cluster.base_url + "/v1/deployments", json=body, timeout=120)
    assert resp.status_code == 201, resp.text
    assert resp.json()["adapter_uri"] == "hf://org/tiny-lora"
    assert _wait_ready(cluster, "tiny-lora")["status"] == "ready"
    with openai.OpenAI(base_url=cluster.base_url + "/v1", api_key="x", max_retries=0) as c:
        reply = c.completions.create(
            model="tiny-lora", prompt="Once upon a time", max_tokens=8, temperature=0
        )
    want, _ = Reference(models["merged"]).complete("Once upon a time", 8)
    assert reply.choices[0].text == want
    assert any(p.endswith("/adapter_model.safetensors") for p in hub.downloads())


def test_an_unknown_hub_repository_is_refused_naming_it(cluster: UpCluster) -> None:
    body = {"name": "nope", "checkpoint_uri": "hf://org/nope"}
    resp = httpx.post(cluster.base_url + "/v1/deployments", json=body, timeout=120)
    assert resp.status_code == 422, resp.text
    assert "hf://org/nope" in resp.json()["error"]["message"]
