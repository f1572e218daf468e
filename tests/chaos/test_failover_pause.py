"""The failover pause: `kill -9` of the worker serving a stream, while another node has a ready
instance of the model, stalls the client's stream for less than `PAUSE_BOUND_S`, and the text
is the uninterrupted one (greedy decoding).

One cluster (2 nodes x 1 CPU worker, the router at its defaults); a deployment held at one
instance per worker (min_instances 2). The workers pace decoding (SLLM_DECODE_DELAY, 50
tokens/s: a slow GPU's rate) so that the stream is long enough to cut into. The openai SDK is
the client; the pause is the largest gap between two chunks it receives.
``SLLM_CHAOS_ROUNDS`` (default 1; `make chaos` sets more) repeats the kill.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from libs.protocol import Bus

from ..e2e.cluster import UpCluster, up_cluster
from ..e2e.events import Events

pytestmark = [pytest.mark.e2e, pytest.mark.chaos, pytest.mark.slow]

ROUNDS = int(os.environ.get("SLLM_CHAOS_ROUNDS", "1"))
MODEL = "pause"
PAUSE_BOUND_S = 1.5
MAX_TOKENS = 240
KILL_AFTER = 30  # chunks
MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Tell me a long story about the sea."}
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpCluster]:
    with up_cluster(
        tmp_path_factory.mktemp("pause"),
        nodes=2,
        SLLM_DECODE_DELAY="0.02",
        SLLM_BANDWIDTH_PROBE_MB="0",
    ) as c:
        r = httpx.post(
            c.base_url + "/v1/deployments",
            json={
                "name": MODEL,
                "checkpoint_uri": c.demo_dir.as_uri(),
                "min_instances": 2,
                "max_instances": 2,
            },
            timeout=30,
        )
        assert r.status_code == 201, r.text
        yield c


def ready_workers(cluster: UpCluster) -> list[str]:
    """The workers of the model's ready instances, by instance id: the first one is the one
    an idle router sends the next request to (fewest in flight, ties by id)."""
    r = httpx.get(cluster.base_url + f"/v1/deployments/{MODEL}", timeout=30)
    assert r.status_code == 200, r.text
    ready = sorted(
        (i["instance_id"], i["worker_id"]) for i in r.json()["instances"] if i["status"] == "ready"
    )
    return [w for _, w in ready]


def two_ready(cluster: UpCluster, timeout: float = 180.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while len(workers := ready_workers(cluster)) < 2:
        assert time.monotonic() < deadline, f"ready instances: {workers}\n{cluster.log()[-3000:]}"
        time.sleep(0.2)
    return workers


@dataclass
class Timed:
    text: str
    request_id: str
    arrivals: list[float]  # when each chunk with text arrived (monotonic)

    @property
    def pause(self) -> float:
        """The largest gap between two chunks."""
        return max((b - a for a, b in itertools.pairwise(self.arrivals)), default=0.0)


def stream(client: openai.OpenAI, on_chunk: Callable[[int], object] = lambda n: None) -> Timed:
    """A streamed greedy chat, every chunk's arrival timed."""
    chunks: openai.Stream[ChatCompletionChunk] = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=True,
        timeout=120,
    )
    parts: list[str] = []
    arrivals: list[float] = []
    request_id = ""
    for n, chunk in enumerate(chunks):
        request_id = chunk.id
        text = "".join(c.delta.content or "" for c in chunk.choices)
        if text:
            parts.append(text)
            arrivals.append(time.monotonic())
        on_chunk(n)
    return Timed("".join(parts), request_id, arrivals)


@pytest.mark.parametrize("round_", range(ROUNDS))
async def test_kill_9_of_the_serving_worker_stalls_the_stream_under_the_bound(
    cluster: UpCluster, round_: int
) -> None:
    client = openai.OpenAI(base_url=cluster.base_url + "/v1", api_key="none", max_retries=0)
    bus = await Bus.connect(cluster.nats_url, name="chaos", root=cluster.root)
    try:
        events = await Events().start(bus)
        await asyncio.to_thread(two_ready, cluster)
        want = await asyncio.to_thread(stream, client)
        assert len(want.arrivals) > 2 * KILL_AFTER, want  # long enough to cut into
        victim = (await asyncio.to_thread(two_ready, cluster))[0]
        killed_at: list[float] = []

        def kill(n: int) -> None:
            if n == KILL_AFTER:
                cluster.child(victim).kill()
                killed_at.append(time.monotonic())

        got = await asyncio.to_thread(stream, client, kill)
        assert killed_at
        print(
            f"round {round_}: largest gap {got.pause:.3f}s (uninterrupted: {want.pause:.3f}s) "
            f"over {len(got.arrivals)} chunks"
        )
        assert got.text == want.text
        # The kill really cut into this stream: it failed over from the victim, once.
        ev = await events.wait_for(
            lambda e: e["kind"] == "request.failover" and e["request_id"] == got.request_id, 30
        )
        assert ev["from_worker_id"] == victim
        print(f"round {round_}: failover wait {ev['wait_s']:.3f}s ({ev['reason']})")
        done = await events.wait_for(
            lambda e: e["kind"] == "request.completed" and e["request_id"] == got.request_id, 30
        )
        assert (done["status"], done["failovers"]) == ("ok", 1)
        assert got.pause < PAUSE_BOUND_S
    finally:
        await bus.close()
        client.close()
