"""The embedding engine: one thread runs every forward pass of one embedding model, batched.

Each step takes every input queued, sorts it by length and cuts it into forwards of at most
``max_batch`` inputs and ``max_batch_tokens`` padded tokens (`plan_forwards`), so that inputs
of similar length share a forward and little is spent on padding. An input is right-padded to
the longest of its forward behind an attention mask, runs through the model's base (hidden
states, not logits), and is pooled over its own tokens only (`pool_states`): the vector does
not depend on what it was batched with. Torch never runs on the event loop; results go back
through ``loop.call_soon_threadsafe``, one hand-off per forward.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from libs.loader.pooling import Pooling
from libs.protocol.errors import (
    BusError,
    InternalError,
    OverloadedError,
    UnavailableError,
)

__all__ = ["EmbedEngine", "EmbedResult", "base_model_of", "plan_forwards", "pool_states"]

log = logging.getLogger(__name__)

# Attention implementations that run any mask on any device. The generation engine switches
# its models to the ragged kernel; an embedding model never goes through it.
_PLAIN_ATTENTION = ("sdpa", "eager")


@dataclass(frozen=True)
class EmbedResult:
    """One input's embedding and how many tokens it took."""

    vector: list[float]
    tokens: int


@dataclass
class _Job:
    ids: list[int]
    future: asyncio.Future[EmbedResult]
    loop: asyncio.AbstractEventLoop


def plan_forwards(lengths: Sequence[int], max_batch: int, max_batch_tokens: int) -> list[list[int]]:
    """Cut inputs of these lengths into forwards (lists of their indices), longest first.

    A forward holds at most ``max_batch`` inputs and, padded to its longest, at most
    ``max_batch_tokens`` tokens; an input longer than that bound runs alone.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable: FIFO among equals
    forwards: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # Sorted longest first: the forward's padded length is its first input's.
        width = lengths[current[0]] if current else lengths[i]
        if current and (
            len(current) + 1 > max_batch or (len(current) + 1) * width > max_batch_tokens
        ):
            forwards.append(current)
            current = []
        current.append(i)
    if current:
        forwards.append(current)
    return forwards


def pool_states(hidden: torch.Tensor, mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """Pool ``hidden`` ([batch, tokens, dim]) over each row's real tokens (``mask`` [batch,
    tokens], 1 for real, right padding) into [batch, dim] float32, unit length if asked."""
    states = hidden.float()
    real = mask.to(torch.bool)
    if pooling.mode == "cls":
        pooled = states[:, 0]
    elif pooling.mode == "last":
        last = real.sum(dim=1) - 1
        pooled = states[torch.arange(states.shape[0], device=states.device), last]
    elif pooling.mode == "max":
        pooled = states.masked_fill(~real.unsqueeze(-1), float("-inf")).amax(dim=1)
    else:  # mean
        weights = real.unsqueeze(-1).to(states.dtype)
        pooled = (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
    if pooling.normalize:
        pooled = F.normalize(pooled, p=2, dim=-1)
    return pooled


def base_model_of(model: Any) -> Any:
    """The part of ``model`` that yields hidden states: the base of a ``*ForCausalLM`` (or
    any head model), the model itself for a bare encoder such as ``BertModel``."""
    base = getattr(model, "base_model", None)
    if base is None:
        prefix = str(getattr(model, "base_model_prefix", "") or "")
        base = getattr(model, prefix, None) if prefix else None
    return base if base is not None else model


def _use_plain_attention(model: Any) -> None:
    config = getattr(model, "config", None)
    current = getattr(config, "_attn_implementation", None)
    setter = getattr(model, "set_attn_implementation", None)
    if current in _PLAIN_ATTENTION or setter is None:
        return
    try:
        setter("sdpa")
    except (ValueError, ImportError):  # an architecture without an SDPA path
        setter("eager")


class EmbedEngine:
    """Runs one embedding model's forward passes on a thread of its own, batching every input
    queued.

    Args:
        model: a transformers model (an encoder, or a causal LM whose base is used).
        pooling: how token states become one vector (`libs.loader.pooling.read_pooling`).
        max_batch: inputs per forward.
        max_batch_tokens: padded tokens per forward (inputs x the longest of them).
        max_queue: inputs that may wait; more are refused (`OverloadedError`).
        pad_id: the id padded positions hold (masked out; any valid id does).
    """

    def __init__(
        self,
        model: Any,
        *,
        pooling: Pooling,
        max_batch: int = 64,
        max_batch_tokens: int = 16384,
        max_queue: int = 1024,
        pad_id: int = 0,
        name: str = "sllm-embed",
    ) -> None:
        if max_batch < 1 or max_batch_tokens < 1:
            raise ValueError("max_batch and max_batch_tokens must be at least 1")
        _use_plain_attention(model)
        self.pooling = pooling
        self.max_batch = max_batch
        self.max_batch_tokens = max_batch_tokens
        self.max_queue = max_queue
        self._model: Any = model
        self._base: Any = base_model_of(model)
        params = inspect.signature(self._base.forward).parameters
        # A decoder would otherwise build a KV cache that nobody reads.
        self._extra: dict[str, Any] = {"use_cache": False} if "use_cache" in params else {}
        self._device = next(model.parameters()).device
        self._pad_id = pad_id
        self._cv = threading.Condition()
        self._queue: deque[_Job] = deque()
        self._in_use = 0
        self._stop_error: BusError | None = None
        self._drained: asyncio.Event | None = None
        self.forwards = 0  # forward passes run (a snapshot; tests check batching with it)
        self.inputs_done = 0  # inputs embedded
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    # --- event-loop side ----------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def in_use(self) -> int:
        """Inputs whose results have not been handed back yet (queued or running)."""
        return self._in_use

    @property
    def waiting(self) -> int:
        """Inputs queued for the next step."""
        return len(self._queue)

    def submit(
        self, ids: list[int], loop: asyncio.AbstractEventLoop
    ) -> asyncio.Future[EmbedResult]:
        """Queue one input's token ids; the future gets its `EmbedResult` (or the error that
        failed it). Cancelling the future drops the input if it has not run yet.

        Raises:
            OverloadedError: ``max_queue`` inputs already wait.
            UnavailableError: the engine is stopped.
        """
        if not ids:
            raise ValueError("an input needs at least one token id")
        future: asyncio.Future[EmbedResult] = loop.create_future()
        with self._cv:
            if self._stop_error is not None:
                raise UnavailableError(f"engine stopped: {self._stop_error.message}")
            if len(self._queue) >= self.max_queue:
                raise OverloadedError(
                    f"{len(self._queue)} inputs already wait for this worker's embedding engine"
                )
            self._in_use += 1
            self._queue.append(_Job(list(ids), future, loop))
            self._cv.notify()
        return future

    async def drained(self, timeout: float) -> bool:
        """Wait until every result is handed back; False on timeout."""
        self._drained = asyncio.Event()
        if self._in_use > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), timeout)
        return self._in_use == 0

    def stop(self, error: BusError, timeout: float) -> bool:
        """Fail every queued input with ``error`` and end the thread (blocking: call it off
        the loop). Returns whether the thread ended within ``timeout`` (a forward in progress
        finishes first); the engine lets go of the model when the thread ends."""
        with self._cv:
            if self._stop_error is None:
                self._stop_error = error
            self._cv.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():
            return False
        with self._cv:  # a thread never started left its queue behind
            leftovers = list(self._queue)
            self._queue.clear()
            failure = self._stop_error or error
        self._hand_back([(j, failure) for j in leftovers])
        self._model = self._base = None
        return True

    def _finished(self, count: int) -> None:
        """On the loop: ``count`` results were handed back."""
        with self._cv:
            self._in_use -= count
            idle = self._in_use == 0
        if idle and self._drained is not None:
            self._drained.set()

    # --- engine thread ------------------------------------------------------------------------

    def _run(self) -> None:
        error: BusError | None = None
        try:
            with torch.inference_mode():
                while True:
                    with self._cv:
                        while self._stop_error is None and not self._queue:
                            self._cv.wait()
                        if self._stop_error is not None:
                            break
                        # Cancelled futures are read racily: at worst one input runs for nobody.
                        jobs = [j for j in self._queue if not j.future.done()]
                        dropped = [j for j in self._queue if j.future.done()]
                        self._queue.clear()
                    self._hand_back([(j, None) for j in dropped])
                    self._step(jobs)
        except BaseException as exc:  # a bug: fail every input rather than leave them hanging
            log.exception("embedding engine thread crashed")
            error = InternalError(f"embedding engine crashed: {exc!r}")
        finally:
            with self._cv:
                leftovers = list(self._queue)
                self._queue.clear()
                error = error or self._stop_error or UnavailableError("engine stopped")
                self._stop_error = self._stop_error or error
            self._hand_back([(j, error) for j in leftovers])
            self._model = self._base = None

    def _step(self, jobs: list[_Job]) -> None:
        plan = plan_forwards([len(j.ids) for j in jobs], self.max_batch, self.max_batch_tokens)
        for n, indices in enumerate(plan):
            batch = [jobs[i] for i in indices]
            stopped = self._stop_error
            if stopped is not None:  # stop() between two forwards: the rest fail at once
                rest = [jobs[i] for later in plan[n:] for i in later]
                self._hand_back([(j, stopped) for j in rest])
                return
            try:
                vectors = self._forward([j.ids for j in batch])
            except Exception as exc:  # one bad forward (out of memory...) fails its inputs only
                log.exception("embedding forward of %d inputs failed", len(batch))
                failure = InternalError(f"embedding forward failed: {exc!r}")
                self._hand_back([(j, failure) for j in batch])
                continue
            self._hand_back(
                [(j, EmbedResult(vec, len(j.ids))) for j, vec in zip(batch, vectors, strict=True)]
            )

    def _forward(self, inputs: list[list[int]]) -> list[list[float]]:
        width = max(len(ids) for ids in inputs)
        ids = torch.full((len(inputs), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(inputs), width), dtype=torch.long)
        for row, seq in enumerate(inputs):
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        ids, mask = ids.to(self._device), mask.to(self._device)
        out = self._base(input_ids=ids, attention_mask=mask, **self._extra)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        pooled = pool_states(hidden, mask, self.pooling)
        self.forwards += 1
        self.inputs_done += len(inputs)
        vectors: list[list[float]] = pooled.cpu().tolist()
        return vectors

    def _hand_back(self, items: list[tuple[_Job, EmbedResult | BusError | None]]) -> None:
        """Hand results (or errors; None: the input was cancelled) to their loops, one call
        per loop."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, Any]]] = {}
        for job, outcome in items:
            by_loop.setdefault(job.loop, []).append((job, outcome))
        for loop, batch in by_loop.items():
            try:
                loop.call_soon_threadsafe(self._deliver, batch)
            except RuntimeError:
                pass  # the loop is closed: nobody is waiting for these any more

    def _deliver(self, items: list[tuple[_Job, EmbedResult | BusError | None]]) -> None:
        for job, outcome in items:
            if job.future.done() or outcome is None:
                continue
            if isinstance(outcome, BaseException):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)
        self._finished(len(items))
