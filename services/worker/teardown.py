"""How a hosted instance ends: one teardown per instance, run to its end whatever is cancelled.

A teardown stops the engine, returns the memory, deletes the instance record and releases the
worker's reservation. It runs in a task of its own that nothing cancels, started at most once
per instance (`Teardowns.begin`): an unload, a shutdown or a failing load that is cancelled
while it waits for the teardown leaves it running, so no cancellation can strand a worker
half-freed. Every step runs even when an earlier one failed, and the last two always run.

`run_cancellable` is the load's half of the bargain: a blocking load in a thread that a
cancellation stops early, without leaking what the thread loads anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from redis.exceptions import RedisError

from libs.cluster import ClusterState
from libs.protocol import Bus
from libs.protocol.errors import UnavailableError
from libs.protocol.events import Event, InstanceFailedEvent
from libs.protocol.state import InstanceRecord

if TYPE_CHECKING:
    from .hosting import Hosted
    from .runtime import AnyRuntime

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long an unload waits for the engine's current forward pass, for a cancelled load to
# notice its token, and for in-flight streams to send their error frames.
STOP_GRACE_S = 10.0
DRAIN_S = 2.0
# How long an unload waits for a teardown before it answers "not freed yet" (it goes on).
TEARDOWN_WAIT_S = 30.0
# Retiring the record is retried (Redis away for a moment) after 0.25, 0.5, 1 s; after that
# the scheduler's reconciliation frees the worker (`services/scheduler/reconcile.py`).
RETIRE_ATTEMPTS = 4
RETIRE_BACKOFF_S = 0.25


class Teardowns:
    """Starts and runs the teardown of this worker's instances, one per instance."""

    def __init__(
        self,
        *,
        bus: Bus,
        state: ClusterState,
        worker_id: str,
        node_id: str,
        torch_ready: Callable[[], bool],
        forget: Callable[[Hosted], None],
    ) -> None:
        self.bus = bus
        self.state = state
        self.worker_id = worker_id
        self.node_id = node_id
        self._torch_ready = torch_ready
        self._forget = forget  # the host lets go of the instance (`Host.hosted` = None)

    def begin(self, hosted: Hosted, failure: str | None) -> asyncio.Task[None]:
        """Start ``hosted``'s teardown, unless it has begun; returns it. ``failure``: why the
        load failed (recorded and announced), None for the unload of a loaded instance."""
        if hosted.teardown is None:
            hosted.status = "stopping"
            task = asyncio.get_running_loop().create_task(
                self._run(hosted, failure), name=f"teardown-{hosted.instance_id}"
            )
            task.add_done_callback(_log_crash)
            hosted.teardown = task
        return hosted.teardown

    async def _run(self, hosted: Hosted, failure: str | None) -> None:
        iid = hosted.instance_id
        try:
            with _logged(iid, "record its end"):
                if failure is None:
                    await self.state.update_instance(iid, status="stopping")
                else:
                    log.warning("instance %s of %s failed: %s", iid, hosted.model, failure)
                    await self.state.update_instance(iid, status="failed", error=failure)
            if failure is not None:
                await self._emit(
                    InstanceFailedEvent(
                        instance_id=iid, model=hosted.model, worker_id=self.worker_id, error=failure
                    )
                )
            runtime, hosted.runtime = hosted.runtime, None
            if runtime is not None:
                with _logged(iid, "stop its engine"):
                    await close_runtime(runtime)
                del runtime
            with _logged(iid, "free its memory"):
                await asyncio.to_thread(free_memory, self._torch_ready())
        finally:
            try:
                await self._retire(hosted)
            finally:
                self._forget(hosted)

    async def _retire(self, hosted: Hosted) -> None:
        """Delete the record and free the worker in Redis (atomically), retrying a little."""
        rec = InstanceRecord(
            instance_id=hosted.instance_id,
            model=hosted.model,
            worker_id=self.worker_id,
            node_id=self.node_id,
            status="stopping",
            created_at=0.0,
        )
        for attempt in range(RETIRE_ATTEMPTS):
            try:
                await self.state.retire_instance(rec)
                return
            except (RedisError, OSError) as exc:
                error = exc
                if attempt + 1 < RETIRE_ATTEMPTS:
                    await asyncio.sleep(RETIRE_BACKOFF_S * 2**attempt)
        log.error("could not retire instance %s: %r", hosted.instance_id, error)

    async def _emit(self, event: Event) -> None:
        await self.bus.emit(event.model_copy(update={"source": self.worker_id}))


async def close_runtime(runtime: AnyRuntime) -> None:
    """Stop the engine (its jobs fail) and let in-flight streams send their error frames."""
    engine = runtime.engine
    await asyncio.to_thread(runtime.close, UnavailableError("instance unloaded"), STOP_GRACE_S)
    await engine.drained(DRAIN_S)


def free_memory(torch_ready: bool) -> None:
    """Return the memory of dropped models (blocking: a full collection)."""
    if torch_ready:  # torch is imported: let it return cached device memory too
        from .runtime import free_memory as free_torch_memory

        free_torch_memory()
    else:
        gc.collect()


async def run_cancellable(
    fn: Callable[[], T], cancel: Callable[[], None], dispose: Callable[[T], None]
) -> T:
    """Run blocking ``fn`` in a thread; if the caller is cancelled, call ``cancel`` (so that
    the thread stops early), wait a while for the thread, and ``dispose`` of a result that
    arrives anyway (it would otherwise hold memory nobody owns)."""
    fut: asyncio.Future[T] = asyncio.ensure_future(asyncio.to_thread(fn))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        cancel()
        loop = asyncio.get_running_loop()

        def discard(f: asyncio.Future[T]) -> None:
            if not f.cancelled() and f.exception() is None:
                # In a thread: disposing joins the engine's thread, never on the event loop.
                loop.run_in_executor(None, _dispose_quietly, dispose, f.result())

        fut.add_done_callback(discard)
        await asyncio.wait({fut}, timeout=STOP_GRACE_S)
        raise


def _dispose_quietly(dispose: Callable[[T], None], value: T) -> None:
    try:
        dispose(value)
    except Exception:
        log.exception("could not dispose of a load nobody waited for")


@contextlib.contextmanager
def _logged(instance_id: str, what: str) -> Iterator[None]:
    """A step of a teardown: its failure is logged, and the teardown goes on."""
    try:
        yield
    except Exception:
        log.exception("teardown of %s: could not %s", instance_id, what)


def _log_crash(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("teardown %s failed", task.get_name(), exc_info=exc)
