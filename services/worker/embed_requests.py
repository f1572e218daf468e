"""A worker's answer to an embedding request: tokenize, check, embed (batched by the engine
with whatever else is queued), and pack the vectors for the bus."""

from __future__ import annotations

import asyncio
import struct
from typing import TYPE_CHECKING

from libs.protocol.errors import BadRequestError, BusTimeoutError
from libs.protocol.messages import EmbedReply, EmbedRequest

if TYPE_CHECKING:
    from .embed_engine import EmbedResult
    from .hosting import Host

# Inputs longer than this (characters, all together) are tokenized in a thread.
INLINE_TEXT_CHARS = 16 * 1024


async def embed(host: Host, req: EmbedRequest, timeout: float) -> EmbedReply:
    """Embed ``req``'s inputs on the hosted embedding model (see `EmbedRuntime`); the
    instance counts as busy (keep-alive) until the vectors are back."""
    hosted, rt = host.ready_embed(req.model)
    host.begin(hosted)
    futures: list[asyncio.Future[EmbedResult]] = []
    try:
        if req.texts is not None:
            texts = req.texts
            if sum(map(len, texts)) > INLINE_TEXT_CHARS:
                ids = await asyncio.to_thread(rt.tokenize, texts)
            else:
                ids = rt.tokenize(texts)
        else:
            ids = req.token_ids or []
        for i, one in enumerate(ids):
            try:
                rt.check_ids(one, f"input[{i}]" if len(ids) > 1 else "input")
            except BadRequestError as exc:
                raise BadRequestError(
                    exc.message, detail={**exc.detail, "param": "input"}
                ) from None
        loop = asyncio.get_running_loop()
        futures = [rt.engine.submit(one, loop) for one in ids]
        try:
            async with asyncio.timeout(timeout):
                results = await asyncio.gather(*futures)
        except TimeoutError:
            raise BusTimeoutError(f"embedding not done within {timeout:g}s") from None
    finally:
        for f in futures:
            f.cancel()  # no-op for those done; drops the inputs of a request that failed
        host.end(hosted, req.keep_alive_s)
    vectors = b"".join(struct.pack(f"<{len(r.vector)}f", *r.vector) for r in results)
    return EmbedReply(
        request_id=req.request_id,
        instance_id=hosted.instance_id,
        dimensions=rt.dimensions,
        vectors=vectors,
        tokens=[len(one) for one in ids],
    )
