"""What the engine tests share: reading a job's tokens to its end."""

from __future__ import annotations

import asyncio

from services.worker.engine import Failed, Handle, Token


async def collect(handle: Handle) -> list[Token]:
    """Every token of a job, until its finish (then its place is released); a `Failed` raises
    its error."""
    out: list[Token] = []
    try:
        while True:
            item = await asyncio.wait_for(handle.queue.get(), 60)
            if isinstance(item, Failed):
                raise item.error
            assert isinstance(item, Token)
            out.append(item)
            if item.finish is not None:
                return out
    finally:
        handle.cancel()
