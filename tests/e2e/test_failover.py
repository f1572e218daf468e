"""Failover end to end: `kill -9` of the worker serving a generation, mid-stream, and the client
still gets the identical complete answer (greedy, and seeded sampling), streamed or whole.

One cluster (2 nodes x 1 CPU worker) for the module. Each test first runs its request without
interruption (the reference), then again, killing the worker that serves it part-way; the
router resumes the generation elsewhere (the other node, or the killed worker once `sllm up`
has restarted it) from the prompt plus the tokens already sent.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from libs.protocol import Bus

from .cluster import UpCluster, up_cluster
from .events import Events

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MESSAGES = [{"role": "user", "content": "Tell me a long story about the sea."}]
# Long enough that the kill lands mid-stream on any machine; the demo model's context is 4096.
MAX_TOKENS = 1500
TIMEOUT_S = 300.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpCluster]:
    with up_cluster(tmp_path_factory.mktemp("failover"), nodes=2) as c:
        yield c


@dataclass
class Answer:
    text: str
    finish: str | None
    completion_tokens: int
    request_id: str


async def streamed(
    cluster: UpCluster, path: str, body: dict[str, Any], *, kill: str = "", after: int = 0
) -> Answer:
    """A streamed answer, read to the end; with ``kill``, that worker gets SIGKILL once
    ``after`` chunks have arrived."""
    parts: list[str] = []
    finish, usage, request_id, chunks = None, 0, "", 0
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    async with (
        httpx.AsyncClient(timeout=TIMEOUT_S) as client,
        client.stream("POST", cluster.base_url + path, json=body) as resp,
    ):
        assert resp.status_code == 200, await resp.aread()
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line.removeprefix("data: "))
            assert "error" not in chunk, chunk
            request_id = chunk["id"]
            if chunk.get("usage"):
                usage = chunk["usage"]["completion_tokens"]
            for choice in chunk["choices"]:
                delta = choice.get("delta", {}).get("content") or choice.get("text") or ""
                parts.append(delta)
                finish = choice.get("finish_reason") or finish
            chunks += 1
            if kill and chunks == after:
                cluster.child(kill).kill()
    return Answer("".join(parts), finish, usage, request_id)


async def whole(cluster: UpCluster, path: str, body: dict[str, Any]) -> Answer:
    async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
        resp = await client.post(cluster.base_url + path, json=body)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    choice = out["choices"][0]
    text = choice["message"]["content"] if "message" in choice else choice["text"]
    return Answer(text, choice["finish_reason"], out["usage"]["completion_tokens"], out["id"])


async def serving_worker(events: Events, request_id: str) -> str:
    done = await events.wait_for(
        lambda e: e["kind"] == "request.completed" and e["request_id"] == request_id
    )
    assert done["status"] == "ok", done
    return str(done["worker_id"])


async def check_failover(events: Events, answer: Answer, victim: str) -> None:
    ev = await events.wait_for(
        lambda e: e["kind"] == "request.failover" and e["request_id"] == answer.request_id
    )
    assert ev["from_worker_id"] == victim
    assert 0 < ev["tokens"] < MAX_TOKENS  # killed mid-stream, not before or after
    done = await events.wait_for(
        lambda e: e["kind"] == "request.completed" and e["request_id"] == answer.request_id
    )
    assert (done["status"], done["failovers"]) == ("ok", 1)
    assert done["completion_tokens"] == answer.completion_tokens


async def test_streamed_greedy_chat_survives_kill_9_of_its_worker(
    cluster: UpCluster, bus: Bus
) -> None:
    events = await Events().start(bus)
    body = {"model": "demo", "messages": MESSAGES, "max_tokens": MAX_TOKENS, "temperature": 0}
    want = await streamed(cluster, "/v1/chat/completions", body)
    assert want.completion_tokens > 100, want  # a long generation to cut into
    victim = await serving_worker(events, want.request_id)

    got = await streamed(cluster, "/v1/chat/completions", body, kill=victim, after=5)
    assert got.text == want.text
    assert (got.finish, got.completion_tokens) == (want.finish, want.completion_tokens)
    await check_failover(events, got, victim)


async def test_whole_greedy_completion_survives_kill_9_of_its_worker(
    cluster: UpCluster, bus: Bus
) -> None:
    events = await Events().start(bus)
    body = {
        "model": "demo",
        "prompt": "Once upon a time",
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
    }
    want = await whole(cluster, "/v1/completions", body)
    assert want.completion_tokens > 100, want
    victim = await serving_worker(events, want.request_id)

    async def kill_once_decoding() -> None:
        # The whole answer shows nothing until the end: kill a moment after the request's
        # generation has begun (the failover event then says how far it had got).
        await asyncio.sleep(1.0)
        cluster.child(victim).kill()

    killing = asyncio.create_task(kill_once_decoding())
    got = await whole(cluster, "/v1/completions", body)
    await killing
    assert got.text == want.text
    assert (got.finish, got.completion_tokens) == (want.finish, want.completion_tokens)
    await check_failover(events, got, victim)


async def test_seeded_sampled_stream_survives_kill_9_of_its_worker(
    cluster: UpCluster, bus: Bus
) -> None:
    events = await Events().start(bus)
    body = {
        "model": "demo",
        "prompt": "The sea was",
        "max_tokens": MAX_TOKENS,
        "temperature": 0.8,
        "top_p": 0.95,
        "seed": 4242,
    }
    want = await streamed(cluster, "/v1/completions", body)
    assert want.completion_tokens > 100, want
    victim = await serving_worker(events, want.request_id)

    got = await streamed(cluster, "/v1/completions", body, kill=victim, after=20)
    assert got.text == want.text
    assert (got.finish, got.completion_tokens) == (want.finish, want.completion_tokens)
    await check_failover(events, got, victim)
