"""A generation's timings from its chunks: the worker's queue wait counts once, from the first
worker, as its prefill does."""

from __future__ import annotations

from typing import Any, cast

import pytest

from libs.protocol.messages import GenerateRequest, TokenChunk
from services.router.backend import Backend
from services.router.generation import Generation
from services.router.metrics import RouterMetrics
from services.router.settings import RouterSettings

pytestmark = pytest.mark.unit


def generation() -> Generation:
    unused = cast(Any, None)  # no bus, cluster view or cold starts: nothing is started
    backend = Backend(
        bus=unused,
        view=unused,
        starts=unused,
        metrics=RouterMetrics(),
        settings=RouterSettings.from_env({}),
        source="router-1",
    )
    return Generation(backend, GenerateRequest(request_id="r-1", model="m", prompt="x"))


def test_the_workers_queue_wait_adds_to_the_routers_once() -> None:
    gen = generation()
    gen.times.queue_s = 0.5  # waited for an instance
    gen._record(TokenChunk(token_ids=[1], queue_s=0.25, prefill_s=0.1))
    gen._record(TokenChunk(token_ids=[2]))
    # A later producer's (a migration's destination) says nothing about the wait for the
    # first token.
    gen._record(TokenChunk(token_ids=[3], queue_s=4.0))
    assert (gen.times.queue_s, gen.times.worker_queue_s, gen.times.prefill_s) == (0.75, 0.25, 0.1)


def test_after_a_failover_the_new_workers_queue_wait_is_not_added() -> None:
    gen = generation()
    gen.failovers = 1
    gen._record(TokenChunk(token_ids=[1], queue_s=0.25, prefill_s=0.3))
    assert (gen.times.queue_s, gen.times.prefill_s) == (0.0, 0.0)
