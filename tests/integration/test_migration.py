"""Live migration between two real worker services over real NATS and Redis (stand-in storage):
identical output wherever the migration lands, events for every round, and the robustness
cases: destination dies, migration too slow, source silent; then the scheduler's endpoint."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from libs.cluster import ClusterState
from libs.protocol import Bus, StreamReader, route
from libs.protocol.endpoints import (
    SCHED_MIGRATE,
    SCHED_PLACE,
    STORAGE_ENSURE,
    WORKER_ADOPT,
    WORKER_ADOPT_DELTA,
    WORKER_GENERATE,
    WORKER_MIGRATE,
    WORKER_RUNNING,
)
from libs.protocol.errors import BadRequestError, ConflictError, NotFoundError
from libs.protocol.messages import (
    AdoptDeltaRequest,
    AdoptRequest,
    DeploymentSpec,
    GenerateReply,
    GenerateRequest,
    MigrateInstanceRequest,
    MigrateReply,
    MigrateRequest,
    PlaceRequest,
    RunningRequest,
    SamplingParams,
    TokenChunk,
)
from services.scheduler.app import SchedulerService
from services.worker.app import WorkerService
from services.worker.settings import WorkerSettings

from .scheduler_stubs import running_scheduler
from .service_processes import request_load
from .test_worker import Events, ensure_from

pytestmark = pytest.mark.integration

MODEL = "tiny"
PROMPT = [1, 77, 78, 79, 80, 81, 82, 83, 84, 85, 86]
SRC, DST = "w-src", "w-dst"
NODES = {SRC: "n0", DST: "n1"}
N = 48  # tokens per generation
DELAY = "0.02"  # seconds per decode step: a migration lands where the test wants it


@pytest.fixture
async def events(bus: Bus) -> Events:
    ev = Events()
    await ev.start(bus)
    return ev


def worker_settings(nats_url: str, redis_url: str, root: str, wid: str, **env: str) -> Any:
    return WorkerSettings.from_env(
        {
            "SLLM_NATS_URL": nats_url,
            "SLLM_REDIS_URL": redis_url,
            "SLLM_ROOT": root,
            "SLLM_INSTANCE_ID": wid,
            "SLLM_NODE_ID": NODES[wid],
            "SLLM_HEARTBEAT_INTERVAL": "0.2",
            "SLLM_HEARTBEAT_TTL": "2",
            "SLLM_DECODE_DELAY": DELAY,
            **{f"SLLM_{k.upper()}": v for k, v in env.items()},
        }
    )


class Pair:
    """Two workers, each hosting a ready instance of the model."""

    def __init__(self, bus: Bus, state: ClusterState, services: dict[str, WorkerService]) -> None:
        self.bus = bus
        self.state = state
        self.services = services

    async def place(self, wid: str, instance_id: str) -> None:
        await request_load(
            self.bus,
            self.state,
            iid=instance_id,
            model=MODEL,
            worker_id=wid,
            node=NODES[wid],
            uri="file:///m/tiny",
        )
        deadline = time.monotonic() + 60
        while (rec := await self.state.get_instance(instance_id)) is None or rec.status != "ready":
            assert time.monotonic() < deadline, f"{instance_id} never became ready: {rec}"
            await asyncio.sleep(0.05)


@asynccontextmanager
async def workers(
    nats_server: Any,
    redis_server: Any,
    root: str,
    bus: Bus,
    state: ClusterState,
    checkpoint: Path,
    *,
    place: bool = True,
    dst_env: dict[str, str] | None = None,
) -> AsyncIterator[Pair]:
    ensure = ensure_from(checkpoint)
    await bus.serve(
        "storage", [route(STORAGE_ENSURE, ensure, node_id=n) for n in sorted(NODES.values())]
    )
    async with AsyncExitStack() as stack:
        services: dict[str, WorkerService] = {}
        for wid in (SRC, DST):
            env = dst_env or {} if wid == DST else {}
            svc = WorkerService(
                worker_settings(nats_server.url, redis_server.url, root, wid, **env)
            )
            await svc.start()
            stack.push_async_callback(svc.stop, "test over")
            services[wid] = svc
        pair = Pair(bus, state, services)
        if place:
            await asyncio.gather(pair.place(SRC, "i-src"), pair.place(DST, "i-dst"))
        yield pair


def request(rid: str, *, seed: int | None = None, n: int = N) -> GenerateRequest:
    sampled = seed is not None
    return GenerateRequest(
        request_id=rid,
        model=MODEL,
        prompt_token_ids=PROMPT,
        params=SamplingParams(
            max_tokens=n,
            temperature=0.8 if sampled else 0.0,
            top_p=0.9,
            seed=seed,
        ),
    )


async def open_stream(
    bus: Bus, req: GenerateRequest, wid: str = SRC
) -> StreamReader[GenerateReply, TokenChunk]:
    return await bus.stream(WORKER_GENERATE, req, worker_id=wid, timeout=20, idle_timeout=30)


async def read_until(
    reader: StreamReader[GenerateReply, TokenChunk], got: list[TokenChunk], k: int
) -> None:
    while sum(len(c.token_ids) for c in got) < k:
        got.append(await reader.__anext__())


async def read_all(reader: StreamReader[GenerateReply, TokenChunk], got: list[TokenChunk]) -> None:
    async for chunk in reader:
        got.append(chunk)


async def eventually(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.02)


def ids(chunks: list[TokenChunk]) -> list[int]:
    return [i for c in chunks for i in c.token_ids]


async def solo(bus: Bus, req: GenerateRequest) -> list[TokenChunk]:
    got: list[TokenChunk] = []
    async with await open_stream(bus, req) as reader:
        await read_all(reader, got)
    return got


async def migrate(bus: Bus, **kw: Any) -> MigrateReply:
    kw.setdefault("instance_id", "i-src")
    kw.setdefault("destination_worker_id", DST)
    kw.setdefault("destination_instance_id", "i-dst")
    return await bus.request(WORKER_MIGRATE, MigrateRequest(**kw), worker_id=SRC, timeout=60)


async def migrated_run(
    bus: Bus, req: GenerateRequest, at: int, **kw: Any
) -> tuple[list[TokenChunk], MigrateReply]:
    """Stream ``req`` from the source, migrate it after ``at`` tokens, read to the end."""
    got: list[TokenChunk] = []
    async with await open_stream(bus, req) as reader:
        await read_until(reader, got, at)
        reply = await migrate(bus, **kw)
        await asyncio.wait_for(read_all(reader, got), 60)
    return got, reply


@pytest.mark.parametrize("seed", [None, 7], ids=["greedy", "seeded"])
async def test_output_is_identical_with_a_migration_early_midway_and_near_the_end(
    nats_server, redis_server, root, bus: Bus, state: ClusterState, events: Events, checkpoint, seed
) -> None:
    async with workers(nats_server, redis_server, root, bus, state, checkpoint) as pair:
        want = await solo(bus, request("solo", seed=seed))
        assert len(ids(want)) == N
        for at in (2, N // 2, N - 14):
            rid = f"r{at}"
            got, reply = await migrated_run(bus, request(rid, seed=seed), at)
            (moved,) = reply.generations
            assert (moved.request_id, moved.outcome) == (rid, "committed"), moved
            assert ids(got) == ids(want)
            assert "".join(c.text for c in got) == "".join(c.text for c in want)
            assert got[-1].finish_reason == want[-1].finish_reason == "length"
            assert got[-1].usage == want[-1].usage
            assert reply.remaining == 0
            committed = await events.wait("migration.committed", "i-dst")
            mine = [e for e in events.of("migration.committed", "i-dst") if e.request_id == rid]
            assert mine, committed
            (c,) = mine
            assert (c.source_instance_id, c.worker_id) == ("i-src", DST)
            assert c.pause_s is not None
            assert c.pause_s >= 0
            assert c.tokens_recomputed == moved.tokens >= len(PROMPT) + at
            rounds = [e for e in events.of("migration.round", "i-src") if e.request_id == rid]
            assert [r.round for r in rounds] == list(range(len(rounds)))
            assert rounds[0].tokens_sent >= len(PROMPT) + at
            assert c.rounds == len(rounds) - 1
        assert pair.services[SRC].running == {}
        assert pair.services[DST].running == {}
        src = pair.services[SRC].host.hosted
        dst = pair.services[DST].host.hosted
        assert src is not None
        assert dst is not None
        assert (src.in_flight, dst.in_flight) == (0, 0)


async def test_a_worker_says_what_it_runs_with_measured_speeds(
    nats_server, redis_server, root, bus: Bus, state: ClusterState, checkpoint
) -> None:
    """What the scheduler's migration policy weighs: each running generation's context and
    remaining tokens, its prefill and its decode pace."""
    async with workers(nats_server, redis_server, root, bus, state, checkpoint):
        got: list[TokenChunk] = []
        async with await open_stream(bus, request("described")) as reader:
            await read_until(reader, got, 5)
            reply = await bus.request(WORKER_RUNNING, RunningRequest(), worker_id=SRC)
            idle = await bus.request(WORKER_RUNNING, RunningRequest(), worker_id=DST)
            await asyncio.wait_for(read_all(reader, got), 60)
        after = await bus.request(WORKER_RUNNING, RunningRequest(), worker_id=SRC)
    assert (reply.instance_id, reply.model, reply.status) == ("i-src", MODEL, "ready")
    (g,) = reply.generations
    generated = g.context_tokens - len(PROMPT)
    assert generated >= 5
    assert g.remaining_tokens == N - generated
    assert g.prefill_tokens == len(PROMPT)
    assert g.prefill_s is not None
    assert g.prefill_s > 0
    assert g.decode_s_per_token is not None
    assert g.decode_s_per_token >= float(DELAY) * 0.9  # the decode delay paces every token
    assert (idle.instance_id, idle.generations) == ("i-dst", [])
    assert after.generations == []


async def test_a_migrated_generation_can_migrate_again(
    nats_server, redis_server, root, bus: Bus, state: ClusterState, events: Events, checkpoint
) -> None:
    async with workers(nats_server, redis_server, root, bus, state, checkpoint):
        want = await solo(bus, request("solo"))
        got: list[TokenChunk] = []
        async with await open_stream(bus, request("twice")) as reader:
            await read_until(reader, got, 5)
            there = await migrate(bus)
            await read_until(reader, got, 20)
            back = await bus.request(
                WORKER_MIGRATE,
                MigrateRequest(
                    instance_id="i-dst",
                    destination_worker_id=SRC,
                    destination_instance_id="i-src",
                ),
                worker_id=DST,
                timeout=60,
            )
            await asyncio.wait_for(read_all(reader, got), 60)
        assert [g.outcome for g in there.generations + back.generations] == ["committed"] * 2
        assert ids(got) == ids(want)
        assert got[-1].usage == want[-1].usage


async def test_destination_dying_mid_migration_leaves_the_source_carrying_on(
    nats_server, redis_server, root, bus: Bus, state: ClusterState, events: Events, checkpoint
) -> None:
    # The destination's engine steps slower than the source decodes, so every round ends
    # with the source ahead again: rounds go on (gap 0 is never reached) until the
    # destination dies after its first prefill.
    slower = {"decode_delay": str(3 * float(DELAY))}
    async with workers(
        nats_server, redis_server, root, bus, state, checkpoint, dst_env=slower
    ) as pair:
        want = await solo(bus, request("solo", n=120))
        got: list[TokenChunk] = []
        async with await open_stream(bus, request("r", n=120)) as reader:
            await read_until(reader, got, 3)
            migrating = asyncio.ensure_future(migrate(bus, target_gap=0, max_rounds=64))
            await events.wait("migration.round", "i-src")
            await pair.services[DST].stop("killed")
            reply = await asyncio.wait_for(migrating, 60)
            await asyncio.wait_for(read_all(reader, got), 60)
        (g,) = reply.generations
        assert g.outcome == "aborted"
        assert g.error
        assert ids(got) == ids(want)
        assert got[-1].usage == want[-1].usage
        aborted = await events.wait("migration.aborted", "i-src")
        assert aborted.side == "source"


async def test_a_migration_past_its_timeout_is_aborted_cleanly(
    nats_server, redis_server, root, bus: Bus, state: ClusterState, events: Events, checkpoint
) -> None:
    # A busy, slow destination: its engine takes a shadow step only every 0.5 s.
    slow = {"decode_delay": "0.5"}
    async with workers(
        nats_server, redis_server, root, bus, state, checkpoint, dst_env=slow
    ) as pair:
        want = await solo(bus, request("solo"))
        async with await open_stream(bus, request("busy", n=500), DST) as busy:
            await busy.__anext__()
            got, reply = await migrated_run(bus, request("slow"), 3, timeout_s=0.3)
        (g,) = reply.generations
        assert g.outcome == "aborted"
        assert "timed out" in g.error
        assert ids(got) == ids(want)
        assert got[-1].usage == want[-1].usage
        # The destination dropped its shadow: no slot, nothing in flight (once the busy
        # stream, whose consumer left, has stopped too).
        dst = pair.services[DST]
        assert dst.adoptions.shadows == {}
        hosted = dst.host.hosted
        assert hosted is not None
        await eventually(lambda: hosted.in_flight == 0)


async def test_destination_drops_a_shadow_the_source_stopped_talking_about(
    nats_server, redis_server, root, bus: Bus, state: ClusterState, events: Events, checkpoint
) -> None:
    async with workers(
        nats_server,
        redis_server,
        root,
        bus,
        state,
        checkpoint,
        dst_env={"migration_timeout": "0.5"},
    ) as pair:
        # The test plays a source that dies after its first message.
        adopt = AdoptRequest(
            migration_id="m-1",
            instance_id="i-dst",
            source_worker_id=SRC,
            source_instance_id="i-src",
            request=request("orphan").model_copy(
                update={"generated_token_ids": [5, 6, 7], "inbox": "nowhere"}
            ),
        )
        reply = await bus.request(WORKER_ADOPT, adopt, worker_id=DST, timeout=10)
        assert reply.tokens == len(PROMPT) + 3
        dst = pair.services[DST]
        assert dst.host.hosted is not None
        assert dst.host.hosted.in_flight == 1
        aborted = await events.wait("migration.aborted", "i-dst", timeout=10)
        assert aborted.side == "destination"
        assert dst.adoptions.shadows == {}
        assert dst.host.hosted.in_flight == 0
        with pytest.raises(NotFoundError):
            await bus.request(
                WORKER_ADOPT_DELTA,
                AdoptDeltaRequest(migration_id="m-1", token_ids=[8], total=4),
                worker_id=DST,
                timeout=10,
            )


async def test_bad_migration_requests_get_typed_errors(
    nats_server, redis_server, root, bus: Bus, state: ClusterState, checkpoint
) -> None:
    async with workers(nats_server, redis_server, root, bus, state, checkpoint):
        with pytest.raises(BadRequestError):
            await migrate(bus, destination_worker_id=SRC)
        reply = await migrate(bus, request_ids=["nobody"])
        assert [(g.request_id, g.outcome) for g in reply.generations] == [("nobody", "not_found")]
        base = request("x").model_copy(update={"generated_token_ids": [5], "inbox": "i"})
        wrong = AdoptRequest(
            migration_id="m-2",
            instance_id="i-other",
            source_worker_id=SRC,
            source_instance_id="i-src",
            request=base,
        )
        with pytest.raises(ConflictError):
            await bus.request(WORKER_ADOPT, wrong, worker_id=DST, timeout=10)
        unseeded = wrong.model_copy(
            update={
                "instance_id": "i-dst",
                "request": base.model_copy(
                    update={"params": SamplingParams(max_tokens=8, temperature=0.7)}
                ),
            }
        )
        with pytest.raises(BadRequestError, match="seed"):
            await bus.request(WORKER_ADOPT, unseeded, worker_id=DST, timeout=10)
        ok = wrong.model_copy(update={"instance_id": "i-dst"})
        await bus.request(WORKER_ADOPT, ok, worker_id=DST, timeout=10)
        with pytest.raises(ConflictError, match="holding 1"):
            await bus.request(
                WORKER_ADOPT_DELTA,
                AdoptDeltaRequest(migration_id="m-2", token_ids=[8], total=5),
                worker_id=DST,
                timeout=10,
            )


# --- the scheduler's endpoint ---------------------------------------------------------------


@pytest.fixture
async def scheduler(nats_server, redis_server, root: str) -> AsyncIterator[SchedulerService]:
    async with running_scheduler(
        nats_server.url, redis_server.url, root, SLLM_PREFETCH_REPLICAS="0"
    ) as svc:
        yield svc


async def test_scheduler_loads_the_model_elsewhere_migrates_and_frees_the_source(
    nats_server,
    redis_server,
    root,
    bus: Bus,
    state: ClusterState,
    events: Events,
    checkpoint,
    scheduler: SchedulerService,
) -> None:
    await state.put_deployment(
        DeploymentSpec(name=MODEL, checkpoint_uri="file:///m/tiny", keep_alive_s=3600.0)
    )
    async with workers(nats_server, redis_server, root, bus, state, checkpoint, place=False):
        placed = await bus.request(SCHED_PLACE, PlaceRequest(model=MODEL), timeout=10)
        source, other = placed.worker_id, DST if placed.worker_id == SRC else SRC
        await events.wait("instance.ready", placed.instance_id, timeout=60)
        req = request("sched", n=N)
        want = await solo_on(bus, req.model_copy(update={"request_id": "solo"}), source)
        got: list[TokenChunk] = []
        async with await open_stream(bus, req, source) as reader:
            await read_until(reader, got, 4)
            reply = await bus.request(
                SCHED_MIGRATE,
                MigrateInstanceRequest(instance_id=placed.instance_id, free_source=True),
                timeout=120,
            )
            await asyncio.wait_for(read_all(reader, got), 60)
        assert reply.destination_worker_id == other
        assert [g.outcome for g in reply.generations] == ["committed"]
        assert reply.source_freed
        assert ids(got) == ids(want)
        assert got[-1].usage == want[-1].usage
        stopped = await events.wait("instance.stopped", placed.instance_id)
        assert stopped.reason == "migrated"
        worker = await state.get_worker(source)
        assert worker is not None
        assert worker.instance_id == ""  # the source's worker is free for another model
        dest = await state.get_instance(reply.destination_instance_id)
        assert dest is not None
        assert (dest.worker_id, dest.status) == (other, "ready")
        with pytest.raises(NotFoundError):
            await bus.request(
                SCHED_MIGRATE, MigrateInstanceRequest(instance_id="i-none"), timeout=10
            )


async def solo_on(bus: Bus, req: GenerateRequest, wid: str) -> list[TokenChunk]:
    got: list[TokenChunk] = []
    async with await open_stream(bus, req, wid) as reader:
        await read_all(reader, got)
    return got
