"""Deployments checked when they are made, through the real services of `sllm up`: a bad
checkpoint is a clear 4xx naming what is wrong and nothing is stored; a good one is
"preparing" then "ready" and serves; one whose weights turn out broken while it is prepared
is "failed" with the reason, and requests for it get that reason at once (the openai SDK)."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import openai
import pytest

from libs.demo import write_demo_model

from .cluster import UpCluster, up_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpCluster]:
    with up_cluster(
        tmp_path_factory.mktemp("deploy-checks"), nodes=1, SLLM_BANDWIDTH_PROBE_MB="0"
    ) as c:
        yield c


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A good tiny model and broken copies of it, side by side."""
    root = tmp_path_factory.mktemp("registry")
    good = Path(write_demo_model(root / "good", "tiny", seed=3))
    no_tokenizer = root / "no-tokenizer"
    shutil.copytree(good, no_tokenizer)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (no_tokenizer / name).unlink()
    for name, change in (
        ("unknown-type", {"model_type": "nosuchmodel"}),
        ("unknown-class", {"architectures": ["NoSuchForCausalLM"]}),
    ):
        shutil.copytree(good, root / name)
        config = json.loads((root / name / "config.json").read_text())
        (root / name / "config.json").write_text(json.dumps({**config, **change}))
    (root / "bad-json").mkdir()
    shutil.copytree(good, root / "bad-json", dirs_exist_ok=True)
    (root / "bad-json" / "config.json").write_text("{not json")
    truncated = root / "truncated"
    shutil.copytree(good, truncated)
    with open(truncated / "model.safetensors", "r+b") as f:
        f.truncate(4096)  # the header is intact, the tensors are cut off
    return root


def _deploy(cluster: UpCluster, name: str, uri: str) -> httpx.Response:
    body = {"name": name, "checkpoint_uri": uri}
    return httpx.post(cluster.base_url + "/v1/deployments", json=body, timeout=120)


def _get(cluster: UpCluster, name: str) -> httpx.Response:
    return httpx.get(cluster.base_url + f"/v1/deployments/{name}", timeout=30)


def _wait_status(cluster: UpCluster, name: str, want: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        body: dict[str, Any] = _get(cluster, name).json()
        if not seen or seen[-1] != body["status"]:
            seen.append(body["status"])
        if body["status"] == want:
            return body
        time.sleep(0.3)
    raise AssertionError(f"{name}: never {want} (went {seen})")


@pytest.mark.parametrize(
    ("uri", "status", "says"),
    [
        ("s3://bucket/model", 400, "unsupported scheme 's3'"),
        ("/models/llama", 400, "unsupported scheme"),
        ("{root}/nowhere", 422, "does not exist"),
        ("{root}/no-tokenizer", 422, "has no tokenizer"),
        ("{root}/unknown-type", 422, "model_type 'nosuchmodel'"),
        ("{root}/unknown-class", 422, "no model class for NoSuchForCausalLM"),
        ("{root}/bad-json", 422, "config.json is not readable JSON"),
    ],
)
def test_a_bad_checkpoint_is_refused_when_deployed_naming_what_is_wrong(
    cluster: UpCluster, registry: Path, uri: str, status: int, says: str
) -> None:
    if uri.startswith("{root}"):
        uri = (registry / uri.removeprefix("{root}/")).as_uri()
    resp = _deploy(cluster, "bad", uri)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["param"] == "checkpoint_uri"
    assert says in error["message"], error["message"]
    assert _get(cluster, "bad").status_code == 404  # nothing stored


def test_a_good_checkpoint_prepares_then_serves_and_a_second_create_is_409(
    cluster: UpCluster, registry: Path
) -> None:
    uri = (registry / "good").as_uri()
    resp = _deploy(cluster, "good", uri)
    assert resp.status_code == 201, resp.text
    assert resp.json()["status"] in ("preparing", "ready")
    ready = _wait_status(cluster, "good", "ready")
    assert ready["error"] == ""
    again = _deploy(cluster, "good", uri)
    assert again.status_code == 409, again.text
    assert again.json()["error"]["code"] == "deployment_exists"
    patched = httpx.patch(
        cluster.base_url + "/v1/deployments/good", json={"keep_alive_s": 7}, timeout=30
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["keep_alive_s"] == 7.0
    assert patched.json()["status"] == "ready"
    with openai.OpenAI(base_url=cluster.base_url + "/v1", api_key="x", max_retries=0) as c:
        # Before its first request: cold, from the DRAM tier its preparation filled.
        cold = c.models.retrieve("good").model_dump()
        assert (cold["id"], cold["status"], cold["warm"]) == ("good", "ready", False)
        assert cold["load_tier"] == "dram"
        assert cold["estimated_startup_s"] > 0
        reply = c.chat.completions.create(
            model="good", messages=[{"role": "user", "content": "Hello!"}], max_tokens=4
        )
        assert reply.choices[0].message.content
        warm = c.models.retrieve("good").model_dump()
        assert warm["warm"] is True
        assert warm["instances_ready"] == 1


def test_weights_found_broken_while_preparing_fail_the_deployment_and_its_requests_at_once(
    cluster: UpCluster, registry: Path
) -> None:
    resp = _deploy(cluster, "truncated", (registry / "truncated").as_uri())
    # Its config and tokenizer are fine: it is accepted, and the copy finds the weights cut.
    assert resp.status_code == 201, resp.text
    failed = _wait_status(cluster, "truncated", "failed")
    assert "truncated" in failed["error"]
    assert "cannot convert" in failed["error"]
    with openai.OpenAI(base_url=cluster.base_url + "/v1", api_key="x", max_retries=0) as c:
        deadline = time.monotonic() + 30  # the router's cached deployment expires meanwhile
        while True:
            t0 = time.monotonic()
            with pytest.raises(openai.APIStatusError) as caught:
                c.chat.completions.create(
                    model="truncated", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
                )
            if caught.value.status_code == 424 or time.monotonic() > deadline:
                break
    assert caught.value.status_code == 424, caught.value.message
    assert time.monotonic() - t0 < 5.0
    assert failed["error"] in caught.value.message
    # Deleting the failed deployment and deploying a good checkpoint under its name works.
    assert httpx.delete(cluster.base_url + "/v1/deployments/truncated", timeout=60).is_success
    assert _deploy(cluster, "truncated", (registry / "good").as_uri()).status_code == 201
    _wait_status(cluster, "truncated", "ready")


def _progress_lines(cluster: UpCluster, model: str) -> tuple[list[dict[str, Any]], str]:
    """A streamed chat that asks for progress, read raw: the progress comments before the first
    chunk, and the answer's text."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Hello!"}],
        "max_tokens": 4,
        "stream": True,
        "stream_options": {"include_progress": True},
    }
    progress: list[dict[str, Any]] = []
    text: list[str] = []
    url = cluster.base_url + "/v1/chat/completions"
    with httpx.stream("POST", url, json=body, timeout=240) as resp:
        assert resp.status_code == 200, resp.read()
        for line in resp.iter_lines():
            if line.startswith(": progress "):
                assert not text, "progress after the answer began"
                progress.append(json.loads(line.removeprefix(": progress ")))
            elif line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line.removeprefix("data: "))
                assert "error" not in chunk, chunk
                text.extend(c["delta"].get("content") or "" for c in chunk["choices"])
    return progress, "".join(text)


def test_a_cold_start_streams_its_progress_when_asked_and_sdk_clients_are_unaffected(
    cluster: UpCluster, registry: Path
) -> None:
    uri = (registry / "good").as_uri()
    for name in ("progress-a", "progress-b"):
        body = {"name": name, "checkpoint_uri": uri, "keep_alive_s": 1}
        resp = httpx.post(cluster.base_url + "/v1/deployments", json=body, timeout=120)
        assert resp.status_code == 201, resp.text
        _wait_status(cluster, name, "ready")
    # The one worker holds progress-b (its keep-alive: 1 s) when progress-a is asked for: a
    # cold start that waits, whatever ran before (a tiny model alone loads in under 0.25 s).
    with openai.OpenAI(base_url=cluster.base_url + "/v1", api_key="x", max_retries=0) as c:
        c.chat.completions.create(
            model="progress-b", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
    progress, text = _progress_lines(cluster, "progress-a")
    assert text
    assert progress, "a cold start sent no progress"
    phases = [p["phase"] for p in progress]
    assert set(phases) <= {"queued", "fetching", "loading"}, phases
    order = {"queued": 0, "fetching": 1, "loading": 2}
    assert [order[p] for p in phases] == sorted(order[p] for p in phases), phases
    assert all(p["elapsed_s"] >= 0 for p in progress)
    placed = [p for p in progress if p["phase"] != "queued"]
    for p in placed:
        assert p["tier"] in ("dram", "ssd", "registry")
        assert p["eta_s"] >= 0
        assert p["instance_id"]
    # The openai SDK skips the comments: a cold model's stream reads as any other.
    with openai.OpenAI(base_url=cluster.base_url + "/v1", api_key="x", max_retries=0) as c:
        stream = c.chat.completions.create(
            model="progress-b",
            messages=[{"role": "user", "content": "Hello!"}],
            max_tokens=4,
            stream=True,
            # sllm's own key in OpenAI's stream_options (the SDK passes it through).
            stream_options=cast(Any, {"include_usage": True, "include_progress": True}),
        )
        chunks = list(stream)
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens >= 1
