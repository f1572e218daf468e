"""The inference engine: one dedicated thread runs every forward pass of one loaded model.

Torch never runs on the event loop, so heartbeats and control messages never wait behind a
prefill. Several requests share the thread by interleaving: it admits new requests (a prefill
each, with its own KV cache), then gives every active request one decode step, round-robin.
Results go back to the event loop through per-request asyncio queues; cancelling is a flag
the thread checks before every step.

Live migration needs two more things. On the source, a job can be *paused* at a token
boundary (the thread parks it with its KV cache and says so after its last token) and resumed
unchanged. On the destination, a *shadow* job prefills the tokens so far and holds without
producing; it can be *extended* with more tokens (one more prefill step on its cache) and
*released* to decode normally from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from transformers import DynamicCache

from libs.protocol.errors import BusError, InternalError, OverloadedError, UnavailableError

from .sampling import Sampling, choose_token

log = logging.getLogger(__name__)

EngineFinish = Literal["stop", "length"]


@dataclass(frozen=True)
class Job:
    """One generation: feed ``input_ids`` (prompt + tokens generated elsewhere), then produce
    up to ``max_new_tokens`` more."""

    input_ids: list[int]
    max_new_tokens: int
    sampling: Sampling
    hold: bool = False  # a shadow: prefill ``input_ids``, produce nothing until released


@dataclass(frozen=True)
class Token:
    """One produced token; ``finish`` is set on the last one (eos: "stop", limit: "length")."""

    token_id: int
    at: float  # time.perf_counter() when it was produced
    finish: EngineFinish | None = None
    prefill_s: float | None = None  # on the first token of a job


@dataclass(frozen=True)
class Failed:
    """The job ended with an error (the engine stopped, or a forward pass raised)."""

    error: BusError


@dataclass(frozen=True)
class Held:
    """A shadow job's KV cache now covers ``tokens`` input tokens (after its prefill or an
    extension); ``seconds`` is what that step took."""

    tokens: int
    seconds: float


@dataclass(frozen=True)
class Paused:
    """The job stopped at a token boundary after ``produced`` tokens: nothing more comes
    until `Engine.resume` (or the job is cancelled)."""

    produced: int


Output = Token | Failed | Held | Paused


class Handle:
    """The event-loop side of one job: its output queue and its cancel flag."""

    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop) -> None:
        self.queue: asyncio.Queue[Output] = asyncio.Queue()
        self._engine = engine
        self._loop = loop
        self._cancelled = threading.Event()
        self._pause = threading.Event()
        self._released = False

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Stop the job (the thread drops it before its next step) and free its slot.

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

    def post(self, item: Output) -> None:
        """Called from the engine thread: hand ``item`` to the event loop."""
        try:
            self._loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting for this any more


@dataclass(eq=False)
class _Seq:
    """Thread-side state of one job."""

    handle: Handle
    job: Job
    cache: Any = None
    last: int = 0
    produced: int = 0
    position: int = 0  # absolute position of the next token to sample
    # A shadow's cache holds every input token but the last (``last``, fed on release), so
    # that releasing it is one ordinary decode step.
    held: int = 0  # input tokens a shadow has taken (``last`` included)


class Engine:
    """Runs one model's forward passes on a thread of its own, for up to ``max_concurrency``
    jobs at a time."""

    def __init__(
        self,
        model: Any,
        *,
        eos_ids: frozenset[int],
        max_concurrency: int,
        name: str = "sllm-engine",
        step_delay: float = 0.0,
    ) -> None:
        self.max_concurrency = max_concurrency
        self._step_delay = step_delay  # seconds after each decode round (a slower device)
        self._model = model
        self._eos = eos_ids
        self._device = next(model.parameters()).device
        # Computing logits for the last position only saves a vocab-sized matmul per prompt token.
        self._keep_last = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._cv = threading.Condition()
        self._pending: deque[_Seq] = deque()
        # Migration commands, run by the thread in order: (what, handle, argument).
        self._commands: deque[tuple[str, Handle, Any]] = deque()
        self._parked: dict[Handle, _Seq] = {}  # paused jobs and shadows (thread only)
        self._in_use = 0
        self._stop_error: BusError | None = None
        self._drained: asyncio.Event | None = None  # set when the last slot is released
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    # --- event-loop side ----------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def in_use(self) -> int:
        """Slots held by jobs whose consumers have not finished."""
        return self._in_use

    def submit(self, job: Job, loop: asyncio.AbstractEventLoop) -> Handle:
        """Queue ``job``; raises `OverloadedError` when every slot is taken."""
        if (job.max_new_tokens < 1 and not job.hold) or not job.input_ids:
            raise ValueError("a job needs input ids and at least one token to produce")
        with self._cv:
            if self._stop_error is not None:
                raise UnavailableError(f"engine stopped: {self._stop_error.message}")
            if self._in_use >= self.max_concurrency:
                raise OverloadedError(
                    f"all {self.max_concurrency} generation slots of this worker are busy"
                )
            self._in_use += 1
            handle = Handle(self, loop)
            self._pending.append(_Seq(handle, job))
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
        sampling from the position after every token it holds."""
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
            self._cv.notify()  # a parked job of this handle can be dropped now
        if idle and self._drained is not None:
            self._drained.set()

    async def drained(self, timeout: float) -> bool:
        """Wait until every slot is given back (their streams ended); False on timeout."""
        self._drained = asyncio.Event()
        if self._in_use > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), timeout)
        return self._in_use == 0

    def stop(self, error: BusError, timeout: float) -> bool:
        """Fail every job with ``error`` and end the thread (blocking: call it off the loop).

        Returns whether the thread ended within ``timeout`` (a forward pass in progress is
        finished first); the engine lets go of the model when the thread ends.
        """
        with self._cv:
            if self._stop_error is None:
                self._stop_error = error
            self._cv.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():
            return False  # the thread drops the model itself when its forward pass returns
        self._model = None
        return True

    # --- engine thread ------------------------------------------------------------------------

    def _run(self) -> None:
        active: list[_Seq] = []
        error: BusError | None = None
        try:
            with torch.inference_mode():
                while True:
                    with self._cv:
                        while (
                            self._stop_error is None
                            and not self._pending
                            and not active
                            and not self._commands
                        ):
                            self._cv.wait(timeout=1.0)
                            self._drop_cancelled_parked()
                        if self._stop_error is not None:
                            break
                        admitted = list(self._pending)
                        self._pending.clear()
                        commands = list(self._commands)
                        self._commands.clear()
                    resumed = [s for c in commands if (s := self._run_command(*c)) is not None]
                    active = [*active, *resumed]
                    # A job stays listed until it is over, so that a stop fails every one.
                    active = [s for s in admitted if self._stopping or self._prefill(s)] + [
                        s for s in active if self._stopping or self._step(s)
                    ]
                    self._drop_cancelled_parked()
                    if self._step_delay > 0 and active:
                        time.sleep(self._step_delay)
        except BaseException as exc:  # a bug: fail every job rather than leave them hanging
            log.exception("engine thread crashed")
            error = InternalError(f"engine crashed: {exc!r}")
        finally:
            with self._cv:
                leftovers = [*self._pending, *active, *self._parked.values()]
                self._pending.clear()
                self._parked.clear()
                self._commands.clear()
                error = error or self._stop_error or UnavailableError("engine stopped")
                self._stop_error = self._stop_error or error
            for seq in leftovers:
                seq.cache = None
                seq.handle.post(Failed(error))
            self._model = None

    @property
    def _stopping(self) -> bool:
        return self._stop_error is not None

    def _forward(self, ids: list[int], cache: Any) -> torch.Tensor:
        """Logits of the last position after feeding ``ids`` into ``cache`` (extended in place)."""
        kwargs: dict[str, Any] = {"past_key_values": cache, "use_cache": True}
        if len(ids) > 1 and self._keep_last:
            kwargs["logits_to_keep"] = 1
        out = self._model(input_ids=torch.tensor([ids], device=self._device), **kwargs)
        logits: torch.Tensor = out.logits[0, -1]
        return logits

    def _drop_cancelled_parked(self) -> None:
        for handle in [h for h in self._parked if h.cancelled]:
            self._parked.pop(handle).cache = None

    def _step(self, seq: _Seq) -> bool:
        """One decode step, or park the job when a pause was asked for."""
        if seq.handle.pause_requested and not seq.handle.cancelled:
            seq.handle._pause.clear()
            self._parked[seq.handle] = seq
            seq.handle.post(Paused(seq.produced))
            return False
        return self._decode(seq)

    def _run_command(self, what: str, handle: Handle, arg: Any) -> _Seq | None:
        """Run one migration command; returns a job that goes back to decoding, if any."""
        seq = self._parked.get(handle)
        if what == "resume" and seq is None:
            handle._pause.clear()  # not parked yet (or finished): it simply carries on
            return None
        if seq is None or handle.cancelled:
            if not handle.cancelled:
                handle.post(Failed(InternalError(f"{what}: the job is not paused or held")))
            return None
        if what == "resume" and not seq.held:
            del self._parked[handle]
            return seq
        if what == "extend" and seq.held:
            if self._hold(seq, arg):
                return None
            del self._parked[handle]
            return None
        if what == "release" and seq.held:
            del self._parked[handle]
            seq.job = replace(seq.job, max_new_tokens=arg, hold=False)
            seq.position = seq.held
            seq.held = 0
            seq.produced = 0
            return seq
        handle.post(Failed(InternalError(f"{what}: not possible for this job")))
        return None

    def _hold(self, seq: _Seq, token_ids: list[int]) -> bool:
        """Feed ``token_ids`` into a shadow (all but the new last one); False if it failed."""
        if not token_ids:
            seq.handle.post(Held(seq.held, 0.0))
            return True
        t0 = time.perf_counter()
        ids = [seq.last, *token_ids[:-1]] if seq.held else token_ids[:-1]
        try:
            if seq.cache is None:
                seq.cache = DynamicCache(config=self._model.config)
            if ids:
                self._forward(ids, seq.cache)
        except Exception as exc:
            return self._fail(seq, "shadow prefill", exc)
        seq.last = token_ids[-1]
        seq.held += len(token_ids)
        seq.handle.post(Held(seq.held, time.perf_counter() - t0))
        return True

    def _prefill(self, seq: _Seq) -> bool:
        """Prefill and produce the first token; False when the job is already over."""
        if seq.handle.cancelled:
            return False
        if seq.job.hold:
            if self._hold(seq, seq.job.input_ids):
                self._parked[seq.handle] = seq
            return False
        t0 = time.perf_counter()
        try:
            seq.cache = DynamicCache(config=self._model.config)
            logits = self._forward(seq.job.input_ids, seq.cache)
            seq.position = len(seq.job.input_ids)
            token = choose_token(logits, seq.job.sampling, seq.position)
        except Exception as exc:
            return self._fail(seq, "prefill", exc)
        return self._emit(seq, token, prefill_s=time.perf_counter() - t0)

    def _decode(self, seq: _Seq) -> bool:
        """One decode step; False when the job is over (finished, cancelled or failed)."""
        if seq.handle.cancelled:
            seq.cache = None
            return False
        try:
            logits = self._forward([seq.last], seq.cache)
            token = choose_token(logits, seq.job.sampling, seq.position)
        except Exception as exc:
            return self._fail(seq, "decode", exc)
        return self._emit(seq, token)

    def _emit(self, seq: _Seq, token: int, *, prefill_s: float | None = None) -> bool:
        seq.produced += 1
        seq.position += 1
        seq.last = token
        finish: EngineFinish | None = None
        if token in self._eos:
            finish = "stop"
        elif seq.produced >= seq.job.max_new_tokens:
            finish = "length"
        seq.handle.post(Token(token, time.perf_counter(), finish, prefill_s))
        if finish is not None:
            seq.cache = None
            return False
        return True

    def _fail(self, seq: _Seq, phase: str, exc: Exception) -> bool:
        log.exception("%s failed", phase)
        seq.cache = None
        seq.handle.post(Failed(InternalError(f"{phase} failed: {exc!r}")))
        return False
