"""LoRA adapters and embeddings through the real services of `sllm up` (two workers on one
node), driven by the openai SDK: adapters deployed on a base answer what peft's merged model
answers, alone and mixed in one batch with each other and the base; with room for two, a third
evicts the least recently used, which comes back on its next request; a base with adapters
cannot be deleted; bad adapters and bad inputs are clear 4xx. Embeddings of strings and token
ids equal the same pooling computed in process."""

from __future__ import annotations

import base64
import functools
import json
import shutil
import struct
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from .cluster import UpCluster, up_cluster
from .reference import Reference

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PROMPTS = ["The quick brown fox", "Once upon a time there", "In the beginning the"]
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny base, three adapters of it (ranks 4, 8, 2; different target modules), their
    merged models (the references), an adapter of another architecture, one whose config
    lies about its rank, and a tiny sentence-transformers BERT."""
    from libs.demo import write_demo_model
    from libs.demo.adapters import write_merged_model, write_random_lora
    from libs.demo.embed import write_tiny_sentence_bert

    root = tmp_path_factory.mktemp("adapters-registry")
    base = Path(write_demo_model(root / "base", "tiny", seed=5))
    out: dict[str, Path] = {"base": base}
    shapes = {
        "a": (4, ("q_proj", "v_proj")),
        "b": (8, ("q_proj", "k_proj", "o_proj")),
        "c": (2, ("v_proj",)),
    }
    for i, (name, (r, targets)) in enumerate(shapes.items()):
        out[name] = write_random_lora(base, root / name, r=r, alpha=2 * r, targets=targets, seed=i)
        out[f"merged-{name}"] = write_merged_model(base, out[name], root / f"merged-{name}")
    other = Path(write_demo_model(root / "other", "small", seed=1))
    out["foreign"] = write_random_lora(other, root / "foreign", r=4)
    liar = root / "rank-mismatch"
    shutil.copytree(out["a"], liar)
    cfg = json.loads((liar / "adapter_config.json").read_text())
    (liar / "adapter_config.json").write_text(json.dumps({**cfg, "r": 16}))
    out["rank-mismatch"] = liar
    out["bert"] = write_tiny_sentence_bert(root / "bert", "cls")
    dense = root / "bert-dense"  # a projection after pooling: vectors this engine cannot make
    shutil.copytree(out["bert"], dense)
    modules = json.loads((dense / "modules.json").read_text())
    modules.append(
        {"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"}
    )
    (dense / "modules.json").write_text(json.dumps(modules))
    out["bert-dense"] = dense
    return out


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, registry: dict[str, Path]
) -> Iterator[UpCluster]:
    with up_cluster(
        tmp_path_factory.mktemp("adapters"),
        nodes=1,
        workers_per_node=2,
        SLLM_BANDWIDTH_PROBE_MB="0",
        SLLM_MAX_ADAPTERS="2",
    ) as c:
        _post(c, {"name": "base", "checkpoint_uri": registry["base"].as_uri()}, 201)
        for name in ("a", "b", "c"):
            body = {"name": f"lora-{name}", "base": "base", "adapter_uri": registry[name].as_uri()}
            _post(c, body, 201)
        _post(
            c, {"name": "bert", "checkpoint_uri": registry["bert"].as_uri(), "task": "embed"}, 201
        )
        yield c


@pytest.fixture(scope="module")
def client(cluster: UpCluster) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=cluster.base_url + "/v1", api_key="unused", max_retries=0, timeout=180
    ) as c:
        yield c


def _post(cluster: UpCluster, body: dict[str, Any], status: int) -> dict[str, Any]:
    resp = httpx.post(cluster.base_url + "/v1/deployments", json=body, timeout=180)
    assert resp.status_code == status, resp.text
    out: dict[str, Any] = resp.json()
    return out


def _complete(client: openai.OpenAI, model: str, prompt: str) -> str:
    resp = client.completions.create(
        model=model, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0
    )
    return resp.choices[0].text


@functools.cache
def _oracle(model_dir: Path) -> Reference:
    return Reference(model_dir)


def _reference(registry: dict[str, Path], name: str, prompt: str) -> str:
    model_dir = registry["base"] if name == "base" else registry[f"merged-{name}"]
    return _oracle(model_dir).complete(prompt, MAX_TOKENS)[0]


def _resident(cluster: UpCluster) -> list[str]:
    body = httpx.get(cluster.base_url + "/v1/deployments/base", timeout=30).json()
    ready = [i for i in body["instances"] if i["status"] == "ready"]
    assert len(ready) == 1, body
    resident: list[str] = ready[0]["adapters"]
    return resident


def _wait_resident(cluster: UpCluster, want: list[str], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while _resident(cluster) != want:
        assert time.monotonic() < deadline, f"resident {_resident(cluster)}, want {want}"
        time.sleep(0.1)


# --- adapters ---------------------------------------------------------------------------------


def test_adapters_are_listed_as_models_of_their_base(
    cluster: UpCluster, client: openai.OpenAI
) -> None:
    models = {m.id: m for m in client.models.list().data}
    assert {"base", "lora-a", "lora-b", "lora-c", "bert"} <= set(models)
    assert (models["lora-a"].model_extra or {}).get("parent") == "base"
    body = httpx.get(cluster.base_url + "/v1/deployments/lora-b", timeout=30).json()
    assert (body["base"], body["instances"]) == ("base", [])
    assert body["adapter_uri"].endswith("/b")


def test_each_adapter_answers_like_peft_merged_model(
    cluster: UpCluster, client: openai.OpenAI, registry: dict[str, Path]
) -> None:
    for name in ("a", "b"):
        assert _complete(client, f"lora-{name}", PROMPTS[0]) == _reference(
            registry, name, PROMPTS[0]
        )
    assert _complete(client, "base", PROMPTS[0]) == _reference(registry, "base", PROMPTS[0])
    # The adapters change the answer (a test of nothing otherwise).
    assert len({_reference(registry, n, PROMPTS[0]) for n in ("base", "a", "b")}) == 3


def test_adapters_and_base_mixed_in_one_batch(
    cluster: UpCluster, client: openai.OpenAI, registry: dict[str, Path]
) -> None:
    jobs = [(m, p) for p in PROMPTS for m in ("base", "a", "b")]
    with ThreadPoolExecutor(len(jobs)) as pool:
        got = list(
            pool.map(
                lambda j: _complete(client, j[0] if j[0] == "base" else f"lora-{j[0]}", j[1]), jobs
            )
        )
    want = [_reference(registry, m, p) for m, p in jobs]
    assert got == want


def test_least_recently_used_adapter_is_evicted_and_reloaded(
    cluster: UpCluster, client: openai.OpenAI, registry: dict[str, Path]
) -> None:
    for name in ("a", "b"):
        _complete(client, f"lora-{name}", PROMPTS[1])
    _wait_resident(cluster, ["lora-a", "lora-b"])
    assert _complete(client, "lora-c", PROMPTS[1]) == _reference(registry, "c", PROMPTS[1])
    _wait_resident(cluster, ["lora-b", "lora-c"])  # room for two: a went
    assert _complete(client, "lora-a", PROMPTS[2]) == _reference(registry, "a", PROMPTS[2])
    _wait_resident(cluster, ["lora-c", "lora-a"])


def test_deleting_a_base_with_adapters_is_refused(cluster: UpCluster) -> None:
    resp = httpx.delete(cluster.base_url + "/v1/deployments/base", timeout=60)
    assert resp.status_code == 409, resp.text
    error = resp.json()["error"]
    assert error["code"] == "deployment_has_adapters"
    assert "lora-a" in error["message"]
    assert httpx.get(cluster.base_url + "/v1/deployments/base", timeout=30).status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"base": "base", "adapter_uri": "foreign"}, 422, "another base architecture"),
        ({"base": "base", "adapter_uri": "rank-mismatch"}, 422, "rank"),
        ({"base": "nosuchbase", "adapter_uri": "a"}, 400, "nosuchbase"),
        ({"base": "lora-a", "adapter_uri": "a"}, 400, "itself an adapter"),
        ({"base": "bert", "adapter_uri": "a"}, 400, "embedding model"),
        ({"base": "base", "adapter_uri": "a", "min_instances": 1}, 400, "min_instances"),
    ],
)
def test_bad_adapters_are_refused_at_deploy(
    cluster: UpCluster, registry: dict[str, Path], body: dict[str, Any], status: int, words: str
) -> None:
    body = {"name": "bad-adapter", **body, "adapter_uri": registry[body["adapter_uri"]].as_uri()}
    error = _post(cluster, body, status)["error"]
    assert words in error["message"], error
    assert (
        httpx.get(cluster.base_url + "/v1/deployments/bad-adapter", timeout=30).status_code == 404
    )


def test_unknown_adapter_is_a_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="lora-nope"):
        _complete(client, "lora-nope", PROMPTS[0])


# --- embeddings -------------------------------------------------------------------------------


def _bert_reference(model_dir: Path, ids: list[list[int]]) -> list[list[float]]:
    """The model's CLS vector of each input, normalised: computed here, one at a time."""
    import torch
    from transformers import AutoModel

    model: Any = AutoModel.from_pretrained(model_dir).eval()
    out = []
    with torch.inference_mode():
        for one in ids:
            hidden = model(input_ids=torch.tensor([one])).last_hidden_state[0, 0]
            out.append(torch.nn.functional.normalize(hidden, dim=0).tolist())
    return out


def _close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-4


def test_embeddings_of_strings_and_token_ids_equal_in_process_pooling(
    client: openai.OpenAI, registry: dict[str, Path]
) -> None:
    from transformers import AutoTokenizer

    texts = ["hello world", "a somewhat longer sentence to embed here", "x"]
    ids = [AutoTokenizer.from_pretrained(registry["bert"])(t)["input_ids"] for t in texts]
    want = _bert_reference(registry["bert"], ids)
    resp = client.embeddings.create(model="bert", input=texts)
    assert [d.index for d in resp.data] == [0, 1, 2]
    assert all(_close(d.embedding, w) for d, w in zip(resp.data, want, strict=True))
    assert resp.usage.prompt_tokens == resp.usage.total_tokens == sum(map(len, ids))
    one = client.embeddings.create(model="bert", input=ids[1])  # one list of token ids
    assert _close(one.data[0].embedding, want[1])
    many = client.embeddings.create(model="bert", input=ids)  # lists of token ids
    assert all(_close(d.embedding, w) for d, w in zip(many.data, want, strict=True))


def test_embeddings_as_base64(cluster: UpCluster, registry: dict[str, Path]) -> None:
    body = {"model": "bert", "input": "hello world", "encoding_format": "base64"}
    resp = httpx.post(cluster.base_url + "/v1/embeddings", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    raw = base64.b64decode(resp.json()["data"][0]["embedding"])
    vector = list(struct.unpack(f"<{len(raw) // 4}f", raw))
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(registry["bert"])("hello world")["input_ids"]
    assert _close(vector, _bert_reference(registry["bert"], [ids])[0])


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"model": "bert", "input": ""}, "empty"),
        ({"model": "bert", "input": []}, "empty"),
        ({"model": "bert", "input": ["ok", ""]}, "input[1] is empty"),
        ({"model": "bert", "input": " ".join(["word"] * 200)}, "exceeds the model's context"),
        ({"model": "bert", "input": "hi", "dimensions": 8}, "dimensions"),
        ({"model": "base", "input": "hi"}, "does not produce embeddings"),
        ({"model": "bert", "input": "hi", "bogus": 1}, "bogus"),
    ],
)
def test_bad_embedding_requests_are_a_400_naming_the_problem(
    cluster: UpCluster, body: dict[str, Any], words: str
) -> None:
    resp = httpx.post(cluster.base_url + "/v1/embeddings", json=body, timeout=60)
    assert resp.status_code == 400, resp.text
    assert words in resp.json()["error"]["message"]


def test_an_embedding_model_whose_modules_are_not_implemented_is_refused_at_deploy(
    cluster: UpCluster, registry: dict[str, Path]
) -> None:
    body = {
        "name": "bert-dense",
        "checkpoint_uri": registry["bert-dense"].as_uri(),
        "task": "embed",
    }
    error = _post(cluster, body, 422)["error"]
    assert "Dense" in error["message"], error


def test_chat_with_an_embedding_model_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="/v1/embeddings"):
        client.chat.completions.create(model="bert", messages=[{"role": "user", "content": "hi"}])
