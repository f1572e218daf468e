"""The engine thread's sequences: waiting for KV budget, running, or parked, and what one step
of the batch does to them. Only the engine thread touches this state."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from libs.protocol.errors import BadRequestError, BusError, InternalError

from .batch_policy import Limits, admissible, compose
from .forward import BatchForward, Choice, Chosen, Feed, choose
from .jobs import EngineFinish, Failed, Held, Job, Output, Paused, Token
from .ragged import SeqKV
from .sampling import History

if TYPE_CHECKING:
    from .engine import Handle
    from .grammar import Matcher

log = logging.getLogger(__name__)

# Shortest common prompt prefix worth copying from another sequence's KV instead of computing.
MIN_SHARED_PREFIX = 16


@dataclass(eq=False)
class _Seq:
    handle: Handle
    job: Job
    submitted: float  # time.perf_counter() at submit
    feed: list[int] = field(default_factory=list)  # tokens to put into the KV next
    kv: SeqKV | None = None
    hold: bool = False  # a shadow: feeds, produces nothing
    # A shadow's KV holds every input token but the last (``last``, fed on release), so that
    # releasing it is one ordinary decode step.
    last: int = 0
    held: int = 0  # input tokens a shadow has taken (``last`` included)
    release_to: int | None = None  # a release that waits for the shadow's feed to finish
    max_new: int = 0
    produced: int = 0
    prior: int = 0  # tokens generated before this job's own (elsewhere, or extensions)
    history: History | None = None
    admitted: float = 0.0
    started: float = 0.0  # when a shadow's current feed began
    first: bool = True  # the next token is the job's first (it carries queue and prefill time)
    matcher: Matcher | None = None  # the job's grammar, advanced by every generated token
    tokens: list[int] = field(default_factory=list)  # what the KV holds, in order
    # A running job whose prompt starts like another one's: it copies the first ``shared``
    # tokens of ``source``'s KV once the source holds them, instead of computing them again.
    source: _Seq | None = None
    shared: int = 0


class Sequences:
    """Every job an engine holds; `step` runs one batched forward pass over the running ones."""

    def __init__(self, model: Any, *, eos_ids: frozenset[int], limits: Limits) -> None:
        self._forward = BatchForward(model)
        self._eos = eos_ids
        self._limits = limits
        out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        self._vocab = int(out.weight.shape[0]) if out is not None else int(model.config.vocab_size)
        self.waiting: deque[_Seq] = deque()
        self.running: list[_Seq] = []  # in admission order
        self.parked: dict[Handle, _Seq] = {}  # paused jobs and holding shadows
        self._admitted: dict[Handle, _Seq] = {}
        self.reserved = 0  # KV tokens reserved by admitted jobs
        self.computed = 0  # prompt and decode tokens fed through the model
        self.copied = 0  # prompt tokens copied from another sequence's KV
        # The last step, for the metrics: sequences it fed, tokens it produced, and whether
        # it fed any prompt (a prefill step) or only decoding sequences.
        self.last_batch = self.last_generated = 0
        self.last_prefill = False
        self._outbox: list[tuple[Handle, Output]] = []

    def warm_up(self) -> None:
        """One small step before serving: a model this engine cannot run fails its load with
        the reason (not every request), and the first request does not pay for lazy init."""
        with torch.inference_mode():
            kv = SeqKV(8)
            self._forward([Feed(kv, [0, 1], True)])
            self._forward([Feed(kv, [2], True)])

    # --- bookkeeping ---------------------------------------------------------------------------

    def post(self, handle: Handle, item: Output) -> None:
        self._outbox.append((handle, item))

    def take_outbox(self) -> dict[asyncio.AbstractEventLoop, list[tuple[Handle, Output]]]:
        out: dict[asyncio.AbstractEventLoop, list[tuple[Handle, Output]]] = {}
        for handle, item in self._outbox:
            out.setdefault(handle.loop, []).append((handle, item))
        self._outbox = []
        return out

    def enqueue(self, handle: Handle, job: Job, at: float) -> None:
        self.waiting.append(_Seq(handle, job, at))

    def has_work(self) -> bool:
        return bool(self.running) or self._admissible() > 0

    def _admissible(self) -> int:
        return admissible(
            [s.job.reservation for s in self.waiting],
            reserved=self.reserved,
            running=len(self.running),
            limits=self._limits,
        )

    def drop_cancelled(self) -> None:
        if any(s.handle.cancelled for s in self.waiting):
            self.waiting = deque(s for s in self.waiting if not s.handle.cancelled)
        for seq in [s for s in self._admitted.values() if s.handle.cancelled]:
            self._free(seq)

    def _free(self, seq: _Seq) -> None:
        """Let go of an admitted job's KV and its reservation."""
        if self._admitted.pop(seq.handle, None) is None:
            return
        self.parked.pop(seq.handle, None)
        if seq in self.running:
            self.running.remove(seq)
        self.reserved -= seq.kv.limit if seq.kv is not None else 0
        seq.kv = None
        seq.history = None

    def fail_all(self, error: BusError, handles: list[Handle]) -> None:
        for seq in [*self.waiting, *self._admitted.values()]:
            self.post(seq.handle, Failed(error))
        for handle in handles:
            self.post(handle, Failed(error))
        self.waiting.clear()
        for seq in list(self._admitted.values()):
            self._free(seq)

    def close(self) -> None:
        self._forward.model = None

    # --- admission ----------------------------------------------------------------------------

    def admit(self) -> int:
        """Start the waiting jobs that fit, in arrival order; returns how many started."""
        n = self._admissible()
        now = time.perf_counter()
        for _ in range(n):
            seq = self.waiting.popleft()
            job = seq.job
            seq.kv = SeqKV(job.reservation)
            self.reserved += job.reservation
            self._admitted[seq.handle] = seq
            seq.admitted = seq.started = now
            seq.prior = job.generated
            seq.max_new = job.max_new_tokens
            generated = job.input_ids[len(job.input_ids) - job.generated :]
            if job.sampling.penalised:
                prompt = job.input_ids[: len(job.input_ids) - job.generated]
                seq.history = History(self._vocab, prompt, self._forward.device)
                for token in generated:
                    seq.history.add(token)
            if job.grammar is not None:
                seq.matcher = job.grammar.matcher()
                if not self._constrain(seq, generated):
                    continue
            if job.hold:
                seq.hold, seq.first = True, False
                seq.feed, seq.last = list(job.input_ids[:-1]), job.input_ids[-1]
                seq.held = len(job.input_ids)
                if not seq.feed:
                    self.post(seq.handle, Held(seq.held, 0.0))
                    self.parked[seq.handle] = seq
                    continue
            else:
                seq.feed = list(job.input_ids)
                self._find_prefix(seq)
            self.running.append(seq)
        return n

    def _find_prefix(self, seq: _Seq) -> None:
        """Share the longest prompt prefix another admitted sequence holds or is computing
        (n > 1 samples of one prompt, requests with a common system prompt), under the same
        LoRA adapter: another adapter's keys and values for the same tokens differ."""
        ids = seq.job.input_ids[:-1]  # the last prompt token is fed: its logits are needed
        if len(ids) < MIN_SHARED_PREFIX:
            return
        best, best_len = None, MIN_SHARED_PREFIX - 1
        for other in self._admitted.values():
            if other is seq or other.source is not None or other.handle in self.parked:
                continue
            if other.job.adapter is not seq.job.adapter:
                continue
            n = _common_prefix(ids, other.tokens, other.feed)
            if n > best_len:
                best, best_len = other, n
        if best is not None:
            seq.source, seq.shared = best, best_len

    @property
    def queued(self) -> int:
        return len(self.waiting)

    @property
    def admitted(self) -> int:
        return len(self._admitted)

    # --- migration commands -------------------------------------------------------------------

    def command(self, what: str, handle: Handle, arg: Any) -> None:
        seq = self._admitted.get(handle)
        parked = seq is not None and handle in self.parked
        if what == "resume" and not parked:
            handle.clear_pause()  # not parked yet (or finished): it simply carries on
            return
        if seq is None or handle.cancelled:
            if not handle.cancelled:
                self.post(handle, Failed(InternalError(f"{what}: the job is not paused or held")))
            return
        if what == "resume" and not seq.hold:
            del self.parked[handle]
            self.running.append(seq)
        elif what == "extend" and seq.hold and parked:
            self._extend(seq, arg)
        elif what == "release" and seq.hold and parked:
            del self.parked[handle]
            self._release(seq, arg)
            self.running.append(seq)
        elif what == "release" and seq.hold:
            seq.release_to = arg  # after the extension being fed
        else:
            self.post(handle, Failed(InternalError(f"{what}: not possible for this job")))

    def _extend(self, seq: _Seq, token_ids: list[int]) -> None:
        if not token_ids:
            self.post(seq.handle, Held(seq.held, 0.0))
            return
        seq.feed = [seq.last, *token_ids[:-1]]
        seq.last = token_ids[-1]
        seq.held += len(token_ids)
        seq.prior += len(token_ids)
        if seq.history is not None:
            for token in token_ids:
                seq.history.add(token)
        if not self._constrain(seq, token_ids):
            return
        seq.started = time.perf_counter()
        del self.parked[seq.handle]
        self.running.append(seq)

    def _release(self, seq: _Seq, max_new: int) -> None:
        seq.hold, seq.release_to = False, None
        seq.feed = [seq.last]
        seq.max_new, seq.produced = max_new, 0
        kv = seq.kv
        if kv is not None and seq.held + max_new > kv.limit:
            # More than the shadow reserved (a caller's mistake): take it rather than fail.
            log.warning(
                "released job needs %d KV tokens, reserved %d", seq.held + max_new, kv.limit
            )
            self.reserved += seq.held + max_new - kv.limit
            kv.limit = seq.held + max_new

    # --- one step -----------------------------------------------------------------------------

    def step(self) -> bool:
        """One forward pass over the running sequences; False when there was nothing to run."""
        for seq in [s for s in self.running if s.handle.pause_requested and not s.hold]:
            seq.handle.clear_pause()
            self.running.remove(seq)
            self.parked[seq.handle] = seq
            self.post(seq.handle, Paused(seq.produced))
        self._copy_prefixes()
        counts = compose(
            [0 if s.source is not None else len(s.feed) for s in self.running], self._limits
        )
        part = [(s, n) for s, n in zip(self.running, counts, strict=True) if n]
        if not part:
            return False
        feeds = [
            Feed(_kv(s), s.feed[:n], n == len(s.feed) and not s.hold, s.job.adapter)
            for s, n in part
        ]
        self.last_batch, self.last_generated = len(part), 0
        self.last_prefill = any(s.first or s.hold for s, _ in part)
        try:
            logits = self._forward(feeds)
        except Exception as exc:
            self._fail([s for s, _ in part], "forward pass", exc)
            return True
        rows: list[_Seq] = []
        for seq, n in part:
            done = n == len(seq.feed)
            seq.tokens.extend(seq.feed[:n])
            self.computed += n
            del seq.feed[:n]
            if done and seq.hold:
                self._held(seq)
            elif done:
                rows.append(seq)
        try:
            matchers = [s.matcher for s in rows]
            if any(m is not None for m in matchers):
                from .grammar import fill_masks

                fill_masks(matchers, logits)
            chosen = choose(logits, [self._choice(s) for s in rows])
        except Exception as exc:
            self._fail(rows, "sampling", exc)
            return True
        for seq, c in zip(rows, chosen, strict=True):
            self._emit(seq, c)
        self.last_generated = len(rows)
        return True

    def _copy_prefixes(self) -> None:
        """Give every job waiting for a shared prefix its copy, once the source holds it; if
        the source is gone (finished, cancelled) or parked, the job computes it itself."""
        for seq in self.running:
            src = seq.source
            if src is None:
                continue
            if src.kv is not None and src.kv.length >= seq.shared and seq.kv is not None:
                limit = seq.kv.limit
                seq.kv = src.kv.copy_prefix(seq.shared, limit)
                seq.tokens = list(seq.job.input_ids[: seq.shared])
                seq.feed = list(seq.job.input_ids[seq.shared :])
                self.copied += seq.shared
                seq.source = None
            elif src.kv is None or src.handle in self.parked or src.source is not None:
                seq.source = None  # nothing to wait for: compute the prompt here

    def _choice(self, seq: _Seq) -> Choice:
        s = seq.job.sampling
        return Choice(
            sampling=s,
            position=_kv(seq).length,
            produced=seq.prior + seq.produced,
            end_ids=self._eos | s.stop_token_ids,
            history=seq.history,
        )

    def _held(self, seq: _Seq) -> None:
        self.post(seq.handle, Held(seq.held, time.perf_counter() - seq.started))
        if seq.release_to is not None:
            self._release(seq, seq.release_to)
        else:
            self.running.remove(seq)
            self.parked[seq.handle] = seq

    def _emit(self, seq: _Seq, c: Chosen) -> None:
        now = time.perf_counter()
        seq.produced += 1
        token = c.token
        s = seq.job.sampling
        finish: EngineFinish | None = None
        if seq.matcher is not None and not self._constrain(seq, [token]):
            return
        if (token in self._eos and not s.ignore_eos) or token in s.stop_token_ids:
            finish = "stop"
        elif seq.matcher is not None and seq.matcher.finished:
            finish = "complete"
        elif seq.produced >= seq.max_new:
            finish = "length"
        prefill_s = queue_s = None
        if seq.first:
            seq.first = False
            prefill_s, queue_s = now - seq.admitted, seq.admitted - seq.submitted
        self.post(seq.handle, Token(token, now, finish, prefill_s, queue_s, c.logprob, c.top))
        if finish is not None:
            self._free(seq)
            return
        seq.feed = [token]
        if seq.history is not None:
            seq.history.add(token)

    def _constrain(self, seq: _Seq, tokens: list[int]) -> bool:
        """Advance the sequence's grammar over ``tokens``; on a token it forbids, fail the job
        (a client's generated tokens that do not fit its own grammar) and return False."""
        if seq.matcher is None:
            return True
        from .grammar import GrammarError

        try:
            for token in tokens:
                seq.matcher.accept(token)
        except GrammarError as exc:
            self.post(seq.handle, Failed(BadRequestError(f"output grammar: {exc}")))
            self._free(seq)
            return False
        return True

    def _fail(self, seqs: list[_Seq], phase: str, exc: Exception) -> None:
        log.exception("%s failed", phase)
        for seq in seqs:
            self.post(seq.handle, Failed(InternalError(f"{phase} failed: {exc!r}")))
            self._free(seq)


def _kv(seq: _Seq) -> SeqKV:
    if seq.kv is None:  # admitted jobs always have a store
        raise InternalError("a running sequence has no KV store")
    return seq.kv


def _common_prefix(ids: list[int], held: list[int], pending: list[int]) -> int:
    """How many leading ``ids`` equal ``held + pending`` (tokens in a KV and about to be)."""
    n = 0
    for a, b in zip(ids, itertools.chain(held, pending), strict=False):
        if a != b:
            break
        n += 1
    return n
