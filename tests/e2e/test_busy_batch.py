"""Failover of a busy batch end to end: `sllm up` (2 nodes x 1 CPU worker), five concurrent
streams (chat and completions, greedy and seeded sampling) on the one instance of the demo
model, and `kill -9` of its worker while every stream is mid-way.

The five first run to the end uninterrupted, together (the reference; the greedy ones must
also equal plain transformers' `generate`, `reference.Reference`). Then they run again,
together, and the worker dies under them: each stream goes on, resumed by the router on
another instance from its prompt plus the tokens already sent, and each client's text is
identical to the uninterrupted one. Workers decode with ``SLLM_DECODE_DELAY`` so that the
kill lands mid-stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from libs.protocol import Bus

from .answers import Answer, streamed
from .cluster import UpCluster, up_cluster
from .events import Events
from .reference import Reference

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MAX_TOKENS = 120  # the demo model's greedy answers to these run past it without an eos
DELAY_S = 0.02  # per engine step: the batch takes a few seconds
CHAT, COMPLETE = "/v1/chat/completions", "/v1/completions"
STREAMS: list[tuple[str, dict[str, Any]]] = [
    (CHAT, {"messages": [{"role": "user", "content": "Tell me a long story about the sea."}]}),
    (COMPLETE, {"prompt": "Once upon a time"}),
    (COMPLETE, {"prompt": "In the morning the harbour"}),
    (COMPLETE, {"prompt": "The sea was", "temperature": 0.8, "top_p": 0.95, "seed": 4242}),
    (CHAT, {"messages": [{"role": "user", "content": "Hello!"}], "temperature": 0.9, "seed": 7}),
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpCluster]:
    with up_cluster(tmp_path_factory.mktemp("busy"), nodes=2, SLLM_DECODE_DELAY=str(DELAY_S)) as c:
        yield c


def body(extra: dict[str, Any]) -> dict[str, Any]:
    return {"model": "demo", "max_tokens": MAX_TOKENS, "temperature": 0, **extra}


async def serving_worker(cluster: UpCluster) -> str:
    async with httpx.AsyncClient(timeout=30) as client:
        resp = await client.get(cluster.base_url + "/v1/deployments/demo")
    assert resp.status_code == 200, resp.text
    ready = [i for i in resp.json()["instances"] if i["status"] == "ready"]
    assert len(ready) == 1, ready  # max_instances 1: the whole batch is on it
    return str(ready[0]["worker_id"])


async def test_every_stream_of_a_busy_batch_survives_kill_9_of_its_worker(
    cluster: UpCluster, bus: Bus
) -> None:
    events = await Events().start(bus)
    # transformers loads (seconds of imports) while the batch runs.
    loading = asyncio.ensure_future(asyncio.to_thread(Reference, cluster.demo_dir))
    want = await asyncio.gather(*(streamed(cluster, path, body(b)) for path, b in STREAMS))
    for answer in want:
        assert (answer.finish, answer.completion_tokens) == ("length", MAX_TOKENS), answer
    ref = await loading
    for (path, b), answer in zip(STREAMS, want, strict=True):
        if "seed" not in b:  # greedy: what transformers says, batched or not
            expected = (
                ref.chat(b["messages"], MAX_TOKENS)
                if path == CHAT
                else ref.complete(b["prompt"], MAX_TOKENS)
            )
            assert (answer.text, answer.finish) == expected, b

    # Again, together; once every stream is a few chunks in, the worker under them dies.
    chunks = [0] * len(STREAMS)
    all_going = asyncio.Event()

    def counting(i: int) -> Any:
        def on_chunk(n: int) -> None:
            chunks[i] = n
            if min(chunks) >= 5:
                all_going.set()

        return on_chunk

    running = [
        asyncio.create_task(streamed(cluster, path, body(b), on_chunk=counting(i)))
        for i, (path, b) in enumerate(STREAMS)
    ]
    await asyncio.wait_for(all_going.wait(), 120)
    victim = await serving_worker(cluster)
    cluster.child(victim).kill()
    got: list[Answer] = await asyncio.gather(*running)

    assert got == want  # text, finish reason and token count of every stream
    for answer in got:
        (moved,) = await events.wait("request.failover", request_id=answer.request_id)
        assert moved["from_worker_id"] == victim
        assert moved["to_instance_id"] != moved["from_instance_id"]
        assert 0 < moved["tokens"] < MAX_TOKENS  # killed mid-stream
        (done,) = await events.wait("request.completed", request_id=answer.request_id)
        assert (done["status"], done["failovers"]) == ("ok", 1), done
        assert (done["instance_id"], done["completion_tokens"]) == (
            moved["to_instance_id"],
            MAX_TOKENS,
        )
