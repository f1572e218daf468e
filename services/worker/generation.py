"""One request's token stream: engine outputs in, `TokenChunk` frames out (text, finish, usage).

For a live migration the stream can pause at a token boundary: it publishes every token the
job produced before the pause, then waits for the decision: hand the stream over (it ends
without a final frame: `StreamHandedOver`) or carry on as if nothing had happened.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from libs.protocol.errors import BusError, BusTimeoutError, StreamHandedOver
from libs.protocol.messages import FinishReason, TokenChunk, TokenLogprob, TopLogprob, Usage

from .detok import IncrementalDetokenizer
from .engine import Failed, Handle, Held, Output, Paused, Token
from .metrics import WorkerMetrics


@dataclass(frozen=True)
class PausedAt:
    """A paused stream: every token produced so far is published, in ``chunks`` frames."""

    new_token_ids: list[int]  # tokens produced by this stream (not those generated elsewhere)
    chunks: int  # frames this stream has published
    published_at: float  # wall time the last of them went out


@dataclass(eq=False)
class _Pause:
    published: asyncio.Future[PausedAt | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    decision: asyncio.Future[bool] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    seen: bool = False  # the engine said `Paused`


class GenerationStream:
    """The chunks of one generation, as the bus's stream producer consumes them.

    A class rather than an async generator so that ``aclose()`` frees the slot even when the
    stream was never iterated. Each chunk carries every token that arrived since the last one;
    the last chunk carries ``finish_reason``, ``usage`` and ``decode_s``.

    Args:
        handle: the engine job.
        detok: the request's detokenizer (already fed any tokens generated elsewhere).
        prompt_tokens: for ``usage``.
        prior_tokens: tokens generated elsewhere; they count as completion tokens.
        token_timeout: seconds to wait for the next token before failing.
        token_text: a token's own text, for logprobs (None: ids only).
        metrics: observes the time to the first token and to the last (None: not measured).
    """

    def __init__(
        self,
        handle: Handle,
        detok: IncrementalDetokenizer,
        *,
        prompt_tokens: int,
        prior_tokens: int,
        token_timeout: float,
        token_text: Callable[[int], str] | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self._handle = handle
        self._metrics = metrics
        self._began = time.perf_counter()  # the engine's clock (`Token.at`)
        self._token_text = token_text
        self._detok = detok
        self._prompt_tokens = prompt_tokens
        self._completion = prior_tokens
        self._timeout = token_timeout
        self._first_at: float | None = None
        self._last_at: float | None = None
        self._done = False
        self._pause: _Pause | None = None
        self.handed_over = False  # another producer continues the stream
        self.new_token_ids: list[int] = []  # every token this stream has put into a chunk
        self.chunks = 0  # chunks returned (one frame each)
        self.prefill_s: float | None = None  # this stream's prefill (None: none here)

    @property
    def prompt_tokens(self) -> int:
        return self._prompt_tokens

    @property
    def completion_tokens(self) -> int:
        """Tokens generated so far, here and elsewhere."""
        return self._completion

    def decode_s_per_token(self) -> float | None:
        """The pace of this stream's tokens so far (None: fewer than two yet)."""
        n = len(self.new_token_ids)
        if n < 2 or self._first_at is None or self._last_at is None:
            return None
        return max(self._last_at - self._first_at, 0.0) / (n - 1)

    @property
    def done(self) -> bool:
        """The stream ended (finished, failed, closed or handed over)."""
        return self._done

    def __aiter__(self) -> GenerationStream:
        return self

    # --- migration ----------------------------------------------------------------------------

    async def pause(self, timeout: float) -> PausedAt | None:
        """Stop the job at a token boundary and wait until every token it produced is
        published; None when the stream ended first. Follow with `hand_over` or `resume`."""
        if self._done:
            return None
        if self._pause is None:
            self._pause = _Pause()
            self._handle.pause()
        try:
            return await asyncio.wait_for(asyncio.shield(self._pause.published), timeout)
        except TimeoutError:
            raise BusTimeoutError(f"the stream did not pause within {timeout:g}s") from None

    def hand_over(self) -> bool:
        """Another producer continues the stream: end this one without a final frame.

        Only after `pause` returned; False when the stream is no longer waiting for the
        decision (its consumer left, or it gave up waiting and carried on)."""
        p = self._pause
        if self._done or p is None or not p.seen or p.decision.done():
            return False
        p.decision.set_result(True)
        self.handed_over = True
        return True

    def resume(self) -> None:
        """The migration is off: carry on where the job paused (no-op when not pausing)."""
        p = self._pause
        if p is None or self._done:
            return
        if p.seen:  # parked: the stream is (or soon is) waiting for the decision
            if not p.decision.done():
                p.decision.set_result(False)
            return
        # The engine may not have parked the job yet; resuming clears its pause either way,
        # and a `Paused` that still arrives is ignored (no pause is pending any more).
        self._pause = None
        if not p.published.done():
            p.published.set_result(None)
        self._handle.resume()

    # --- chunks -------------------------------------------------------------------------------

    async def __anext__(self) -> TokenChunk:
        entered = time.time()  # right after the previous chunk was published
        while True:
            if self._done:
                raise StopAsyncIteration
            p = self._pause
            if p is not None and p.seen:
                await self._wait_decision(p, entered)
                continue
            items = await self._next_items()
            paused = next((k for k, i in enumerate(items) if isinstance(i, Paused)), None)
            if paused is not None:
                items = items[:paused]  # nothing follows a `Paused` until the job resumes
                if self._pause is not None:
                    self._pause.seen = True
            tokens = [i for i in items if not isinstance(i, Held | Paused)]
            if tokens:
                chunk = await self._chunk(tokens)
                self.chunks += 1
                return chunk

    async def _wait_decision(self, p: _Pause, published_at: float) -> None:
        if not p.published.done():
            p.published.set_result(PausedAt(list(self.new_token_ids), self.chunks, published_at))
        try:
            hand_over = await asyncio.wait_for(asyncio.shield(p.decision), self._timeout)
        except TimeoutError:
            hand_over = False  # nobody decided: the generation stays here
        except BaseException:
            await self.aclose()  # cancelled: the consumer went away
            raise
        self._pause = None
        if hand_over:
            await self.aclose()
            raise StreamHandedOver
        self._handle.resume()

    async def _next_items(self) -> list[Output]:
        queue = self._handle.queue
        try:
            async with asyncio.timeout(self._timeout):  # not wait_for: see StreamReader
                first = await queue.get()
        except TimeoutError:
            await self.aclose()
            raise BusTimeoutError(f"no token within {self._timeout:g}s") from None
        except BaseException:
            await self.aclose()  # cancelled: the consumer went away
            raise
        items = [first]
        while not queue.empty():
            items.append(queue.get_nowait())
        return items

    async def _chunk(self, items: list[Token | Failed]) -> TokenChunk:
        ids: list[int] = []
        text: list[str] = []
        logprobs: list[TokenLogprob] = []
        prefill_s: float | None = None
        queue_s: float | None = None
        finish: FinishReason | None = None
        last_at = 0.0
        for failed in (i for i in items if isinstance(i, Failed)):
            await self.aclose()  # the stream ends in an error frame; tokens before it go too
            raise failed.error
        for item in (i for i in items if isinstance(i, Token)):
            ids.append(item.token_id)
            last_at = item.at
            if item.logprob is not None:
                logprobs.append(self._logprob(item))
            if item.queue_s is not None:
                queue_s = item.queue_s
            if item.prefill_s is not None:
                prefill_s, self._first_at = item.prefill_s, item.at
                self.prefill_s = item.prefill_s
                if self._metrics is not None:
                    self._metrics.first_token(item.at - self._began)
            elif self._first_at is None:  # a job released after a migration: no prefill
                self._first_at = item.at
            if item.finish == "stop":  # eos: its id is reported, its text is not
                finish = "stop"
                break
            text.append(self._detok.add([item.token_id]))
            if self._detok.stopped:
                finish = "stop"
                break
            if item.finish in ("length", "complete"):
                finish = "length" if item.finish == "length" else "stop"
                break
        self._completion += len(ids)
        self.new_token_ids.extend(ids)
        if ids:
            self._last_at = last_at
        lps = logprobs or None
        if finish is None:
            return TokenChunk(
                token_ids=ids,
                text="".join(text),
                logprobs=lps,
                queue_s=queue_s,
                prefill_s=prefill_s,
            )
        text.append(self._detok.finish())
        if self._detok.stopped:
            finish = "stop"
        await self.aclose()
        if self._metrics is not None:
            self._metrics.finished(last_at - self._began)
        return TokenChunk(
            token_ids=ids,
            text="".join(text),
            logprobs=lps,
            queue_s=queue_s,
            prefill_s=prefill_s,
            finish_reason=finish,
            usage=Usage(prompt_tokens=self._prompt_tokens, completion_tokens=self._completion),
            decode_s=last_at - self._first_at if self._first_at is not None else 0.0,
        )

    def _logprob(self, item: Token) -> TokenLogprob:
        text = self._token_text or str
        return TokenLogprob(
            token_id=item.token_id,
            token=text(item.token_id),
            logprob=float(item.logprob or 0.0),
            top=[TopLogprob(token_id=t, token=text(t), logprob=lp) for t, lp in item.top],
        )

    def interrupt(self, error: BusError) -> None:
        """End the stream from outside with ``error`` (raised by the chunk being awaited)."""
        self._handle.cancel()
        self._handle.queue.put_nowait(Failed(error))

    async def aclose(self) -> None:
        """Stop the job and free its slot (idempotent)."""
        self._done = True
        self._handle.cancel()
        p = self._pause
        if p is not None and not p.published.done():
            p.published.set_result(None)  # a migration waiting for the pause: it ended first
