"""Cold starts through the router: queueing, placement retries, timeouts, busy and dead
instances, with real NATS and Redis and stand-in scheduler and workers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from libs.cluster import ClusterState
from libs.protocol import Bus
from libs.protocol.errors import NotFoundError
from libs.protocol.events import RequestCompletedEvent

from .probes import until
from .router_stubs import (
    MODEL,
    EventLog,
    RunningRouter,
    StubScheduler,
    StubWorker,
    deploy,
    ready_instance,
    router_settings,
    running_router,
)

pytestmark = pytest.mark.integration

BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def scheduler(bus: Bus, state: ClusterState) -> StubScheduler:
    await deploy(state)
    return await StubScheduler(bus, state).serve()


@pytest.fixture
def router_env() -> dict[str, str]:
    """Settings a test overrides (by parametrizing or by changing the dict first)."""
    return {}


@pytest.fixture
async def router(
    nats_server, redis_server, root: str, router_env: dict[str, str]
) -> AsyncIterator[RunningRouter]:
    settings = router_settings(nats_server.url, redis_server.url, root, **router_env)
    async with running_router(settings) as r:
        yield r


@pytest.fixture
async def http(router: RunningRouter) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=router.url, timeout=30) as c:
        yield c


async def chat(http: httpx.AsyncClient) -> httpx.Response:
    return await http.post("/v1/chat/completions", json=BODY)


def queued(router: RunningRouter) -> int:
    return router.svc.serving.backend.starts.queue.depth(MODEL)


async def test_cold_start_places_waits_for_ready_then_serves_warm(
    scheduler: StubScheduler, worker: StubWorker, http: httpx.AsyncClient, bus: Bus
) -> None:
    scheduler.load_s = 0.4
    events = await EventLog().watch(bus, "request.completed", RequestCompletedEvent)
    resp = await chat(http)
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"] == "Hello, world!"
    assert len(scheduler.places) == 1
    cold = await events.wait_for(lambda e: e.request_id == resp.json()["id"])
    assert cold.status == "ok"
    assert 0.2 <= cold.load_s <= cold.queue_s <= cold.total_s
    assert cold.instance_id == "i-1"

    resp2 = await chat(http)
    assert resp2.status_code == 200
    warm = await events.wait_for(lambda e: e.request_id == resp2.json()["id"])
    assert warm.load_s == 0.0
    assert len(scheduler.places) == 1  # warm: no placement
    metrics = (await http.get("/metrics")).text
    assert f'sllm_router_cold_starts_total{{model="{MODEL}"}} 1.0' in metrics
    assert "sllm_router_placement_seconds_count 1.0" in metrics  # the one placement, timed


async def test_concurrent_cold_requests_share_one_placement(
    scheduler: StubScheduler, worker: StubWorker, http: httpx.AsyncClient
) -> None:
    scheduler.load_s = 0.3
    resps = await asyncio.gather(*(chat(http) for _ in range(6)))
    assert [r.status_code for r in resps] == [200] * 6
    assert len(scheduler.places) == 1
    assert len(worker.requests) == 6


@pytest.mark.parametrize("router_env", [{"SLLM_QUEUE_SIZE": "1"}])
async def test_full_queue_answers_429_with_retry_after(
    scheduler: StubScheduler, worker: StubWorker, router: RunningRouter, http: httpx.AsyncClient
) -> None:
    scheduler.never_ready = True
    first = asyncio.create_task(chat(http))
    await until(lambda: queued(router) == 1, "one queued request")
    resp = await chat(http)
    assert resp.status_code == 429
    assert resp.headers["retry-after"] == "3"
    error = resp.json()["error"]
    assert error["type"] == "rate_limit_error"
    assert error["code"] == "overloaded"
    assert "waiting" in error["message"]
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    await until(lambda: queued(router) == 0, "an empty queue")


@pytest.mark.parametrize("router_env", [{"SLLM_START_TIMEOUT": "0.6"}])
async def test_start_timeout_answers_503_with_retry_after(
    scheduler: StubScheduler, worker: StubWorker, router: RunningRouter, http: httpx.AsyncClient
) -> None:
    scheduler.never_ready = True
    started = time.monotonic()
    resp = await chat(http)
    assert time.monotonic() - started < 5
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "3"
    assert "in time" in resp.json()["error"]["message"]
    assert queued(router) == 0
    assert worker.requests == []


@pytest.mark.parametrize("router_env", [{"SLLM_START_TIMEOUT": "0.6"}])
async def test_scheduler_without_workers_gives_503_naming_the_cause(
    scheduler: StubScheduler, worker: StubWorker, http: httpx.AsyncClient
) -> None:
    scheduler.unavailable_first = 10_000
    resp = await chat(http)
    assert resp.status_code == 503
    assert "no free worker" in resp.json()["error"]["message"]
    assert len(scheduler.places) >= 2  # retried with backoff


async def test_unavailable_placement_is_retried_until_it_succeeds(
    scheduler: StubScheduler, worker: StubWorker, http: httpx.AsyncClient
) -> None:
    scheduler.unavailable_first = 3
    resp = await chat(http)
    assert resp.status_code == 200, resp.text
    assert len(scheduler.places) == 4


async def test_failed_load_is_placed_again_once(
    scheduler: StubScheduler, worker: StubWorker, http: httpx.AsyncClient
) -> None:
    scheduler.fail_loads = 1
    resp = await chat(http)
    assert resp.status_code == 200, resp.text
    assert len(scheduler.places) == 2


async def test_second_failed_load_fails_the_queue_with_503(
    scheduler: StubScheduler, worker: StubWorker, http: httpx.AsyncClient
) -> None:
    scheduler.fail_loads = 2
    resps = await asyncio.gather(chat(http), chat(http))
    for resp in resps:
        assert resp.status_code == 503
        assert resp.json()["error"]["code"] == "load_failed"
        assert "bad disk" in resp.json()["error"]["message"]
        assert "retry-after" in resp.headers


async def test_busy_instance_sends_the_request_to_another(
    scheduler: StubScheduler, state: ClusterState, bus: Bus, http: httpx.AsyncClient
) -> None:
    busy = await StubWorker(bus, worker_id="w-a", overloaded_first=1).serve()
    other = await StubWorker(bus, worker_id="w-b").serve()
    await ready_instance(state, instance_id="i-a", worker_id="w-a")
    await ready_instance(state, instance_id="i-b", worker_id="w-b")
    resp = await chat(http)
    assert resp.status_code == 200, resp.text
    assert len(busy.requests) == 1  # tried first (least loaded, then by id), said overloaded
    assert len(other.requests) == 1
    assert scheduler.places == []


async def test_busy_only_instance_is_retried_after_a_backoff(
    scheduler: StubScheduler, state: ClusterState, worker: StubWorker, http: httpx.AsyncClient
) -> None:
    worker.overloaded_first = 3
    await ready_instance(state)
    resp = await chat(http)
    assert resp.status_code == 200, resp.text
    assert len(worker.requests) == 4


@pytest.mark.parametrize("router_env", [{"SLLM_START_TIMEOUT": "0.8"}])
async def test_instance_busy_until_the_deadline_gives_429(
    scheduler: StubScheduler, state: ClusterState, worker: StubWorker, http: httpx.AsyncClient
) -> None:
    worker.overloaded_first = 10_000
    await ready_instance(state)
    resp = await chat(http)
    assert resp.status_code == 429
    assert "retry-after" in resp.headers


async def test_dead_instance_is_skipped_and_a_new_one_placed(
    scheduler: StubScheduler, state: ClusterState, worker: StubWorker, http: httpx.AsyncClient
) -> None:
    # A ready record whose worker is gone (nobody answers its subject).
    await ready_instance(state, instance_id="i-dead", worker_id="w-dead")
    scheduler.dead_workers.add("w-dead")
    resp = await chat(http)
    assert resp.status_code == 200, resp.text
    assert len(scheduler.places) == 1
    assert len(worker.requests) == 1


async def test_client_leaving_the_queue_is_forgotten(
    scheduler: StubScheduler, worker: StubWorker, router: RunningRouter, bus: Bus
) -> None:
    scheduler.never_ready = True
    events = await EventLog().watch(bus, "request.completed", RequestCompletedEvent)
    async with httpx.AsyncClient(
        base_url=router.url, timeout=httpx.Timeout(0.5, connect=10.0)
    ) as http:
        with pytest.raises(httpx.ReadTimeout):
            await chat(http)
    await until(lambda: queued(router) == 0, "an empty queue")
    ev = await events.wait_for(lambda e: e.model == MODEL)
    assert ev.status == "cancelled"
    assert ev.queue_s > 0


async def test_undeployed_model_fails_waiting_requests_with_404(
    scheduler: StubScheduler, worker: StubWorker, router: RunningRouter, http: httpx.AsyncClient
) -> None:
    scheduler.unavailable_first = 10_000  # no worker: requests wait and placement retries
    waiting = asyncio.create_task(chat(http))
    await until(lambda: queued(router) == 1, "one queued request")
    resp = await http.delete(f"/v1/deployments/{MODEL}")
    assert resp.status_code == 200
    failed = await asyncio.wait_for(waiting, 10)
    assert failed.status_code == 404


@pytest.mark.parametrize("router_env", [{"SLLM_START_TIMEOUT": "1"}])
async def test_instances_their_workers_disown_give_503_not_404(
    scheduler: StubScheduler, state: ClusterState, bus: Bus, http: httpx.AsyncClient
) -> None:
    for i in range(3):
        await StubWorker(bus, worker_id=f"w{i}", reject=NotFoundError("no such instance")).serve()
        await ready_instance(state, instance_id=f"i-{i}", worker_id=f"w{i}")
    started = time.monotonic()
    resp = await chat(http)
    assert time.monotonic() - started < 5
    assert resp.status_code == 503
    assert "no usable instance" in resp.json()["error"]["message"]
