"""One request's token stream: engine outputs in, `TokenChunk` frames out (text, finish, usage)."""

from __future__ import annotations

import asyncio

from libs.protocol.errors import BusTimeoutError
from libs.protocol.messages import FinishReason, TokenChunk, Usage

from .detok import IncrementalDetokenizer
from .engine import Failed, Handle, Token


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
    """

    def __init__(
        self,
        handle: Handle,
        detok: IncrementalDetokenizer,
        *,
        prompt_tokens: int,
        prior_tokens: int,
        token_timeout: float,
    ) -> None:
        self._handle = handle
        self._detok = detok
        self._prompt_tokens = prompt_tokens
        self._completion = prior_tokens
        self._timeout = token_timeout
        self._first_at: float | None = None
        self._done = False

    def __aiter__(self) -> GenerationStream:
        return self

    async def __anext__(self) -> TokenChunk:
        if self._done:
            raise StopAsyncIteration
        queue = self._handle.queue
        try:
            first = await asyncio.wait_for(queue.get(), self._timeout)
        except TimeoutError:
            await self.aclose()
            raise BusTimeoutError(f"no token within {self._timeout:g}s") from None
        except BaseException:
            await self.aclose()  # cancelled: the consumer went away
            raise
        items = [first]
        while not queue.empty():
            items.append(queue.get_nowait())
        return await self._chunk(items)

    async def _chunk(self, items: list[Token | Failed]) -> TokenChunk:
        ids: list[int] = []
        text: list[str] = []
        prefill_s: float | None = None
        finish: FinishReason | None = None
        last_at = 0.0
        for failed in (i for i in items if isinstance(i, Failed)):
            await self.aclose()  # the stream ends in an error frame; tokens before it go too
            raise failed.error
        for item in (i for i in items if isinstance(i, Token)):
            ids.append(item.token_id)
            last_at = item.at
            if item.prefill_s is not None:
                prefill_s, self._first_at = item.prefill_s, item.at
            if item.finish == "stop":  # eos: its id is reported, its text is not
                finish = "stop"
                break
            text.append(self._detok.add([item.token_id]))
            if self._detok.stopped:
                finish = "stop"
                break
            if item.finish == "length":
                finish = "length"
                break
        self._completion += len(ids)
        if finish is None:
            return TokenChunk(token_ids=ids, text="".join(text), prefill_s=prefill_s)
        text.append(self._detok.finish())
        if self._detok.stopped:
            finish = "stop"
        await self.aclose()
        return TokenChunk(
            token_ids=ids,
            text="".join(text),
            finish_reason=finish,
            usage=Usage(prompt_tokens=self._prompt_tokens, completion_tokens=self._completion),
            prefill_s=prefill_s,
            decode_s=last_at - self._first_at if self._first_at is not None else 0.0,
        )

    async def aclose(self) -> None:
        """Stop the job and free its slot (idempotent)."""
        self._done = True
        self._handle.cancel()
