"""A generation's chunks with a callback at their end, however the stream ends: the bus
closes every stream it produces (`aclose`), started or not, so ``done`` runs exactly once."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from libs.protocol.messages import TokenChunk


class Tracked:
    """A generation's chunks that call ``done`` once when the stream ends, however it ends
    (the bus closes every stream it produces)."""

    def __init__(self, chunks: AsyncIterator[TokenChunk], done: Callable[[], None]) -> None:
        self._chunks = chunks
        self._done: Callable[[], None] | None = done

    def __aiter__(self) -> Tracked:
        return self

    async def __anext__(self) -> TokenChunk:
        return await self._chunks.__anext__()

    async def aclose(self) -> None:
        try:
            aclose = getattr(self._chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            done, self._done = self._done, None
            if done is not None:
                done()
