"""The inference engine: one thread runs every forward pass of one loaded model, batched.

Continuous batching: each step is one forward pass over every running sequence (a token for
each one decoding, bounded chunks of prompts being prefilled; see `batch_policy` and
`forward`). Requests join between steps, first come first served by free KV budget, and leave
the moment they finish or are cancelled. Torch never runs on the event loop, so heartbeats and
control messages never wait behind a step. Results go back to the event loop through
per-request asyncio queues, one hand-off per step for the whole batch; cancelling is a flag
the thread checks between steps.

Live migration needs two more things. On the source, one sequence can be *paused* at a token
boundary (parked with its KV, the rest of the batch carries on) and resumed unchanged. On the
destination, a *shadow* job prefills the tokens so far (alongside live traffic) and holds
without producing; it can be *extended* with more tokens and *released* to decode from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import torch

from libs.protocol.errors import (
    BadRequestError,
    BusError,
    InternalError,
    OverloadedError,
    UnavailableError,
)

from .batch_policy import Limits
from .jobs import EngineFinish, Failed, Held, Job, Output, Paused, Token
from .sequences import Sequences

__all__ = [
    "Engine",
    "EngineFinish",
    "Failed",
    "Handle",
    "Held",
    "Job",
    "Output",
    "Paused",
    "Token",
]

log = logging.getLogger(__name__)

# Told of every forward step, on the engine thread: (sequences fed, tokens produced, whether it
# fed any prompt, seconds it took). The worker's metrics (`WorkerMetrics.stepped`).
OnStep = Callable[[int, int, bool, float], None]


class Handle:
    """The event-loop side of one job: its output queue and its cancel flag."""

    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop) -> None:
        self.queue: asyncio.Queue[Output] = asyncio.Queue()
        self._engine = engine
        self.loop = loop
        self._cancelled = threading.Event()
        self._pause = threading.Event()
        self._released = False

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Stop the job (the thread drops it before its next step) and free its place.

        Idempotent; call it from the event loop when the job is done or its consumer left.
        """
        self._cancelled.set()
        if not self._released:
            self._released = True
            self._engine._release()

    def pause(self) -> None:
        """See `Engine.pause`."""
        self._engine.pause(self)

    def resume(self) -> None:
        """See `Engine.resume`."""
        self._engine.resume(self)

    @property
    def pause_requested(self) -> bool:
        return self._pause.is_set()

    def clear_pause(self) -> None:
        self._pause.clear()


class Engine:
    """Runs one model's forward passes on a thread of its own, batching every job it holds.

    Args:
        model: a transformers causal LM (its attention is switched to the ragged kernel).
        eos_ids: the tokens that end a generation.
        limits: batch size, KV budget (tokens) and prefill chunk.
        max_queue: jobs that may wait for KV budget; more are refused (`OverloadedError`).
            0: no queue, a job is refused when ``max_batch`` jobs are held already.
        step_delay: seconds to sleep after each step (simulates a slower device, in tests).
        on_step: told of every step (`OnStep`; keep it cheap: it runs between steps).
    """

    def __init__(
        self,
        model: Any,
        *,
        eos_ids: frozenset[int],
        limits: Limits,
        max_queue: int = 1024,
        name: str = "sllm-engine",
        step_delay: float = 0.0,
        on_step: OnStep | None = None,
    ) -> None:
        self.limits = limits
        self._on_step = on_step
        self.max_queue = max_queue
        self._step_delay = step_delay
        self._model: Any = model
        self._seqs = Sequences(model, eos_ids=eos_ids, limits=limits)
        self._seqs.warm_up()
        self._cv = threading.Condition()
        self._submitted: deque[tuple[Handle, Job, float]] = deque()
        self._commands: deque[tuple[str, Handle, Any]] = deque()
        self._in_use = 0
        self._waiting = 0  # submitted jobs not admitted yet (under the lock)
        self._stop_error: BusError | None = None
        self._drained: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    # --- event-loop side ----------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def in_use(self) -> int:
        """Jobs whose consumers have not finished (waiting, running or parked)."""
        return self._in_use

    @property
    def waiting(self) -> int:
        """Jobs queued for KV budget."""
        return self._waiting

    @property
    def kv_reserved(self) -> int:
        """KV tokens reserved by admitted jobs (read from another thread: a snapshot)."""
        return self._seqs.reserved

    @property
    def tokens_computed(self) -> int:
        """Tokens fed through the model so far (prompts and decodes; a snapshot)."""
        return self._seqs.computed

    @property
    def tokens_copied(self) -> int:
        """Prompt tokens whose KV was copied from another sequence instead (a snapshot)."""
        return self._seqs.copied

    @property
    def sequences(self) -> int:
        """Admitted jobs (running or parked) whose KV the engine holds (a snapshot)."""
        return self._seqs.admitted

    def submit(self, job: Job, loop: asyncio.AbstractEventLoop) -> Handle:
        """Queue ``job`` (first come, first served). Raises `BadRequestError` when it could never
        fit the KV budget, `OverloadedError` when the queue is full."""
        if (job.max_new_tokens < 1 and not job.hold) or not job.input_ids:
            raise ValueError("a job needs input ids and at least one token to produce")
        budget = self.limits.kv_tokens
        if job.reservation > budget:
            raise BadRequestError(
                f"prompt of {len(job.input_ids)} tokens + {job.max_new_tokens} tokens to "
                f"generate = {job.reservation} exceeds this worker's KV cache budget of "
                f"{budget} tokens",
                detail={"tokens": job.reservation, "kv_budget_tokens": budget},
            )
        with self._cv:
            if self._stop_error is not None:
                raise UnavailableError(f"engine stopped: {self._stop_error.message}")
            if self.max_queue == 0 and self._in_use >= self.limits.max_batch:
                raise OverloadedError(
                    f"all {self.limits.max_batch} sequences of this worker are taken (no queue)"
                )
            if self.max_queue > 0 and self._waiting >= self.max_queue:
                raise OverloadedError(
                    f"{self._waiting} requests already wait for this worker's KV cache"
                )
            self._in_use += 1
            self._waiting += 1
            handle = Handle(self, loop)
            self._submitted.append((handle, job, time.perf_counter()))
            self._cv.notify()
        return handle

    def pause(self, handle: Handle) -> None:
        """Stop ``handle``'s job at the next token boundary; its queue gets `Paused` after its
        last token (a job that finishes first gets no `Paused`)."""
        with self._cv:
            handle._pause.set()
            self._cv.notify()

    def resume(self, handle: Handle) -> None:
        """Let a paused job decode again, from exactly where it stopped."""
        self._command("resume", handle, None)

    def extend(self, handle: Handle, token_ids: list[int]) -> None:
        """Feed more tokens into a shadow's cache; its queue gets `Held` when done."""
        self._command("extend", handle, list(token_ids))

    def release(self, handle: Handle, max_new_tokens: int) -> None:
        """Turn a shadow into a running job that produces up to ``max_new_tokens`` tokens,
        sampling from the position after every token it holds (after any pending extension)."""
        if max_new_tokens < 1:
            raise ValueError("a released job needs at least one token to produce")
        self._command("release", handle, max_new_tokens)

    def _command(self, what: str, handle: Handle, arg: Any) -> None:
        with self._cv:
            if self._stop_error is not None:
                raise UnavailableError(f"engine stopped: {self._stop_error.message}")
            self._commands.append((what, handle, arg))
            self._cv.notify()

    def _release(self) -> None:
        with self._cv:
            self._in_use -= 1
            idle = self._in_use == 0
            self._cv.notify()  # the thread drops the cancelled job and frees its KV
        if idle and self._drained is not None:
            self._drained.set()

    async def drained(self, timeout: float) -> bool:
        """Wait until every job is given back (their streams ended); False on timeout."""
        self._drained = asyncio.Event()
        if self._in_use > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), timeout)
        return self._in_use == 0

    def stop(self, error: BusError, timeout: float) -> bool:
        """Fail every job with ``error`` and end the thread (blocking: call it off the loop).

        Returns whether the thread ended within ``timeout`` (a step in progress is finished
        first); the engine lets go of the model when the thread ends.
        """
        with self._cv:
            if self._stop_error is None:
                self._stop_error = error
            self._cv.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():
            return False  # the thread drops the model itself when its step returns
        self._model = None
        return True

    # --- engine thread ------------------------------------------------------------------------

    def _run(self) -> None:
        seqs = self._seqs
        error: BusError | None = None
        try:
            with torch.inference_mode():
                while True:
                    with self._cv:
                        while (
                            self._stop_error is None
                            and not self._submitted
                            and not self._commands
                            and not seqs.has_work()
                        ):
                            self._cv.wait(timeout=1.0)
                            seqs.drop_cancelled()
                            self._waiting = len(self._submitted) + seqs.queued
                            self._flush()
                        if self._stop_error is not None:
                            break
                        submitted = list(self._submitted)
                        self._submitted.clear()
                        commands = list(self._commands)
                        self._commands.clear()
                    for handle, job, at in submitted:
                        seqs.enqueue(handle, job, at)
                    for what, handle, arg in commands:
                        seqs.command(what, handle, arg)
                    seqs.drop_cancelled()
                    seqs.admit()
                    with self._cv:
                        self._waiting = len(self._submitted) + seqs.queued
                    began = time.perf_counter()
                    stepped = seqs.step()
                    took = time.perf_counter() - began
                    self._flush()
                    if stepped and self._on_step is not None:
                        self._on_step(seqs.last_batch, seqs.last_generated, seqs.last_prefill, took)
                    if self._step_delay > 0 and stepped:
                        time.sleep(self._step_delay)
                    elif not stepped:
                        # Running jobs, none of which could feed (all waiting for a prefix
                        # being computed elsewhere): wait for news rather than spin.
                        with self._cv:
                            self._cv.wait(timeout=0.01)
        except BaseException as exc:  # a bug: fail every job rather than leave them hanging
            log.exception("engine thread crashed")
            error = InternalError(f"engine crashed: {exc!r}")
        finally:
            with self._cv:
                leftovers = [h for h, _, _ in self._submitted]
                self._submitted.clear()
                self._commands.clear()
                error = error or self._stop_error or UnavailableError("engine stopped")
                self._stop_error = self._stop_error or error
            seqs.fail_all(error, leftovers)
            self._flush()
            self._model = None
            seqs.close()

    def _flush(self) -> None:
        """Hand this step's outputs to the event loops, one call per loop."""
        batches = self._seqs.take_outbox()
        for loop, items in batches.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:
                pass  # the loop is closed: nobody is waiting for these any more


def _deliver(items: list[tuple[Handle, Output]]) -> None:
    for handle, item in items:
        handle.queue.put_nowait(item)
