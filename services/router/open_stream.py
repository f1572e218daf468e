"""Opening a generation's token stream on an instance: the least loaded ready one, waiting for a
cold start (bounded by the deadline) when there is none, backing off when every one is busy, and
skipping one that cannot take the request (left out of the ready list for a while)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from libs.protocol import Bus, StreamReader
from libs.protocol.endpoints import WORKER_GENERATE
from libs.protocol.errors import (
    ConflictError,
    NoRespondersError,
    NotFoundError,
    OverloadedError,
    UnavailableError,
)
from libs.protocol.messages import GenerateReply, GenerateRequest, TokenChunk
from libs.protocol.state import InstanceRecord

from .cluster import least_loaded
from .cold_queue import BACKOFF_MAX_S, BACKOFF_MIN_S

if TYPE_CHECKING:
    from .backend import Backend
    from .generation import Timings

log = logging.getLogger(__name__)

# Answers to a generate request that mean "this instance cannot take it": try another.
INSTANCE_UNUSABLE = (NotFoundError, ConflictError, NoRespondersError, UnavailableError)
# How long an instance that did not answer is left out of the ready list.
SUSPECT_S = 5.0
# Unusable instances tolerated per request before it fails.
MAX_UNUSABLE = 3

TokenStream = StreamReader[GenerateReply, TokenChunk]


async def open_stream(
    b: Backend, request: GenerateRequest, avoid: set[str], *, deadline: float, times: Timings
) -> tuple[InstanceRecord, TokenStream]:
    """Open ``request``'s stream on a ready instance (waiting for one until ``deadline``; the
    waits add to ``times``); the instance comes back counted in the view's in-flight counts."""
    model = request.model
    unusable = 0
    while True:
        inst = await acquire(
            b,
            model,
            avoid,
            deadline=deadline,
            times=times,
            request_id=request.request_id,
            adapter=request.adapter,
        )
        b.view.begin(inst.instance_id)
        try:
            reader = await _open(b, inst, request, deadline)
        except OverloadedError:
            b.view.end(inst.instance_id)
            avoid.add(inst.instance_id)
            continue
        except INSTANCE_UNUSABLE as exc:
            b.view.end(inst.instance_id)
            b.view.suspect(inst.instance_id, SUSPECT_S)
            b.view.changed(model)
            unusable += 1
            log.info("instance %s unusable for %s: %s", inst.instance_id, model, exc)
            if unusable >= MAX_UNUSABLE:
                # The worker's own code (not_found...) would mislead the client here.
                raise UnavailableError(
                    f"no usable instance of {model!r}: {exc.message}",
                    detail={"model": model},
                ) from None
            continue
        except BaseException:
            b.view.end(inst.instance_id)
            raise
        return inst, reader


async def _open(
    b: Backend, inst: InstanceRecord, request: GenerateRequest, deadline: float
) -> TokenStream:
    timeout = b.settings.request_timeout
    if request.adapter:
        # The worker acknowledges once it holds the adapter: one not yet on its node is
        # fetched first (seconds for a large one from a registry), part of the request's start.
        timeout = max(timeout, deadline - time.monotonic())
    opening = asyncio.ensure_future(
        b.bus.stream(
            WORKER_GENERATE,
            request,
            worker_id=inst.worker_id,
            timeout=timeout,
            idle_timeout=b.settings.stream_idle_timeout,
        )
    )
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        # The client left while the worker was accepting: once the acknowledgement is in,
        # close the stream, which tells the worker to stop.
        opening.add_done_callback(lambda t: _close_later(b.bus, t))
        raise


async def acquire(
    b: Backend,
    model: str,
    avoid: set[str],
    *,
    deadline: float,
    times: Timings,
    request_id: str = "",
    adapter: str = "",
) -> InstanceRecord:
    """The least loaded ready instance of ``model`` (one holding ``adapter`` preferred),
    waiting (bounded by the deadline) when there is none."""
    backoff = BACKOFF_MIN_S
    ticket: int | None = None
    while True:
        ready = await b.view.ready(model)
        if ready:
            inst = least_loaded(ready, b.view.inflight, avoid, adapter)
            if inst is not None:
                return inst
            # Every ready instance just said it is full: back off, then try them all again.
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise OverloadedError(
                    f"every instance of {model!r} is busy",
                    detail={"model": model},
                )
            started = time.monotonic()
            await asyncio.sleep(min(backoff, remaining))
            times.queue_s += time.monotonic() - started
            backoff = min(backoff * 2, BACKOFF_MAX_S)
            avoid.clear()
            continue
        started = time.monotonic()
        try:
            load_s, ticket = await b.starts.wait(
                model,
                deadline=deadline,
                ticket=ticket,
                request_id=request_id,
            )
        finally:
            times.queue_s += time.monotonic() - started
        times.load_s += load_s


def _close_later(bus: Bus, opened: asyncio.Task[TokenStream]) -> None:
    if not opened.cancelled() and opened.exception() is None:
        bus.spawn(opened.result().aclose())
