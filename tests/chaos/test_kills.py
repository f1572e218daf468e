"""`kill -9` of the scheduler, of the storage service and of the router, each at a random point
of a cold start and in the middle of a stream, healed by `sllm up` with no operator step.

One cluster (1 node x 2 CPU workers; no prefetch, so a cold start fetches the checkpoint from
the registry) for the module; the openai SDK is the client, with no retries of its own.

A cold start: a deployment of a new name for the demo checkpoint, then a request for it; the
kill lands after a random fraction of an uninterrupted cold start's duration (measured first).
The checkpoint comes from an HTTP registry that drips it (`Registry`): from a local directory
the demo loads in 40 ms, too short to kill into; this way a cold start lasts about a second.
A stream: a greedy streamed completion; the kill lands after a random number of chunks.

Every case asserts:
- no request the client sees fails, except one whose own connection was killed (the router):
  the first request the client makes once `sllm up` restarted the router succeeds;
- no wrong output: every greedy answer equals the uninterrupted one (the text a killed
  router's stream delivered is a prefix of it); the cold deployments share the demo's
  checkpoint, so their answer is the demo's;
- the killed service is back within the restart delay `sllm up` announces plus
  `RESTART_BOUND_S`, and every deployment serves again within `HEAL_BOUND_S` of that.

``SLLM_CHAOS_ROUNDS`` (default 1; `make chaos` sets more) repeats every case;
``SLLM_CHAOS_SEED`` fixes the random kill points (the seed in use is printed).
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor

import openai
import pytest

from libs.protocol import Keys

from ..e2e.cluster import UpCluster
from .harness import (
    DROPPED,
    HEAL_BOUND_S,
    REQUEST_TIMEOUT_S,
    ROUNDS,
    VICTIMS,
    Kill,
    Reference,
    Registry,
    ask,
    client,
    cluster,
    deploy,
    kill,
    reference,
    registry,
    restarted,
    rng,
    serving_every_deployment,
    state,
    stream,
    undeploy,
    wait,
)

pytestmark = [pytest.mark.e2e, pytest.mark.chaos, pytest.mark.slow]

__all__ = ["client", "cluster", "reference", "registry"]  # the module's fixtures


# --- the cases ----------------------------------------------------------------------------


@pytest.mark.parametrize("round_", range(ROUNDS))
@pytest.mark.parametrize("victim", list(VICTIMS))
def test_kill_9_during_a_cold_start_loses_no_request_and_heals(
    cluster: UpCluster,
    client: openai.OpenAI,
    reference: Reference,
    registry: Registry,
    victim: str,
    round_: int,
) -> None:
    name = f"cold-{victim}-{round_}"
    deploy(cluster, name, registry.url)
    after = rng("cold", victim, round_).uniform(0.0, 0.95) * reference.cold_s
    with ThreadPoolExecutor(1) as pool:
        t0 = time.monotonic()
        cold: Future[str] = pool.submit(ask, client, name)
        time.sleep(max(0.0, after - (time.monotonic() - t0)))
        k = kill(cluster, victim)
        if victim != "router":
            # The outage: a warm request is served as ever.
            assert ask(client, "demo") == reference.short
        try:
            answer: str | None = cold.result(REQUEST_TIMEOUT_S)
        except DROPPED:
            assert victim == "router"  # only the client's own connection may fail it
            answer = None
        answered_s = time.monotonic() - k.at
    if answer is not None:
        assert answer == reference.short
    delay, back_s = restarted(cluster, k)
    if victim == "router":
        # The client's first request to the restarted router: the cold deployment, ready or
        # still loading, answers.
        assert ask(client, name) == reference.short
    serving_every_deployment(client, reference)
    serving_s = time.monotonic() - k.at
    print(
        f"{victim} killed {after:.2f}s into a cold start ({reference.cold_s:.2f}s uninterrupted): "
        f"the request {'answered' if answer is not None else 'dropped'} {answered_s:.1f}s "
        f"after the kill; {victim} back after {back_s:.1f}s (restart delay {delay:.1f}s); "
        f"every deployment serving {serving_s:.1f}s after the kill"
    )
    assert serving_s - back_s < HEAL_BOUND_S
    undeploy(cluster, name)


@pytest.mark.parametrize("round_", range(ROUNDS))
@pytest.mark.parametrize("victim", list(VICTIMS))
def test_kill_9_during_a_stream_loses_no_request_and_heals(
    cluster: UpCluster,
    client: openai.OpenAI,
    reference: Reference,
    victim: str,
    round_: int,
) -> None:
    at_chunk = rng("stream", victim, round_).randint(3, len(reference.stream) // 2)
    killed: list[Kill] = []

    def kill_at(n: int) -> None:
        if n == at_chunk:
            killed.append(kill(cluster, victim))

    got = stream(client, kill_at)
    assert killed, "the stream ended before the kill"
    (k,) = killed
    ended_s = time.monotonic() - k.at
    if got.dropped:
        assert victim == "router"  # only the client's own connection may fail it
        # What arrived before the connection dropped is the uninterrupted text's beginning.
        assert reference.long.startswith("".join(got.chunks))
    else:
        assert "".join(got.chunks) == reference.long
    delay, back_s = restarted(cluster, k)
    if victim == "router":
        # The client's first request to the restarted router.
        assert ask(client, "demo") == reference.short
    serving_every_deployment(client, reference)
    serving_s = time.monotonic() - k.at
    print(
        f"{victim} killed at chunk {at_chunk} of {len(reference.stream)}: the stream "
        f"{'dropped' if got.dropped else 'completed'} {ended_s:.1f}s after the kill; "
        f"{victim} back after {back_s:.1f}s (restart delay {delay:.1f}s); every deployment "
        f"serving {serving_s:.1f}s after the kill"
    )
    assert serving_s - back_s < HEAL_BOUND_S


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_kill_9_of_the_scheduler_the_moment_it_places_a_cold_start(
    cluster: UpCluster,
    client: openai.OpenAI,
    reference: Reference,
    registry: Registry,
    round_: int,
) -> None:
    """The kill lands inside the placement window: the scheduler has just written the
    instance record and reserved its worker, and dies before the load ends. The worker's load
    goes on; the router's place request, sent again to the restarted scheduler, finds the
    instance loading and waits for it; no worker stays reserved for an instance that is gone."""
    name = f"placed-{round_}"
    deploy(cluster, name, registry.url)
    keys = Keys(cluster.root)
    store = state(cluster)
    with ThreadPoolExecutor(1) as pool:
        cold: Future[str] = pool.submit(ask, client, name)
        placed_s = wait(lambda: bool(store.scard(keys.model_instances(name))), "the placement", 30)
        k = kill(cluster, "scheduler")
        answer = cold.result(REQUEST_TIMEOUT_S)
        answered_s = time.monotonic() - k.at
    assert answer == reference.short
    delay, back_s = restarted(cluster, k)
    serving_every_deployment(client, reference)

    def reservations_backed() -> bool:
        for worker in store.smembers(keys.workers):
            iid = store.hget(keys.worker(str(worker)), "instance_id")
            if iid and not store.exists(keys.instance(str(iid))):
                return False
        return True

    wait(reservations_backed, "every reserved worker's instance to exist", HEAL_BOUND_S)
    print(
        f"scheduler killed {placed_s:.2f}s after the request, as it placed {name}: the request "
        f"answered {answered_s:.1f}s after the kill; scheduler back after {back_s:.1f}s "
        f"(restart delay {delay:.1f}s)"
    )
    undeploy(cluster, name)
