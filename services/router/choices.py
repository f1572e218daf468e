"""``n`` > 1: several choices of one prompt, as that many generations of the request (the i-th
sampled with seed + i) whose answers merge into one OpenAI answer, whole or streamed.

Each choice is an ordinary generation (queueing, failover and migration work per choice); the
worker's engine computes their common prompt once and copies its KV to the others (prefix
sharing), so n choices cost one prefill.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from libs.protocol.messages import GenerateRequest, Usage

from .generation import Generation
from .responses import AnswerFormat

_SEED_MASK = (1 << 63) - 1


def fan_out(req: GenerateRequest, n: int) -> list[GenerateRequest]:
    """The ``n`` generations of a request (its seed is set): ids ``<id>-<i>``, seeds + i."""
    seed = req.params.seed or 0
    return [
        req.model_copy(
            update={
                "request_id": f"{req.request_id}-{i}",
                "params": req.params.model_copy(update={"seed": (seed + i) & _SEED_MASK}),
            }
        )
        for i in range(n)
    ]


def total_usage(usages: Sequence[Usage]) -> Usage:
    """One prompt, every choice's completion tokens (as OpenAI counts them)."""
    return Usage(
        prompt_tokens=usages[0].prompt_tokens if usages else 0,
        completion_tokens=sum(u.completion_tokens for u in usages),
    )


def merge_whole(answers: Sequence[dict[str, Any]], usage: Usage) -> dict[str, Any]:
    """One answer holding every choice of ``answers`` (each a one-choice answer)."""
    merged = dict(answers[0])
    merged["choices"] = [choice for answer in answers for choice in answer["choices"]]
    merged["usage"] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }
    return merged


async def merged_events(
    gens: Sequence[Generation],
    fmts: Sequence[AnswerFormat],
    reason: Callable[[Generation], str],
    error_event: Callable[[Exception], bytes],
) -> AsyncIterator[bytes]:
    """The SSE events of every choice, interleaved as their chunks arrive; an error in any
    choice ends the answer with an error event (the others are stopped by their finish)."""
    for fmt in fmts:
        for opening in fmt.opening():
            yield opening
    queue: asyncio.Queue[bytes | Exception | None] = asyncio.Queue()

    async def pump(gen: Generation, fmt: AnswerFormat) -> None:
        try:
            while (chunk := await gen.next_chunk()) is not None:
                if (data := fmt.tokens(chunk)) is not None:
                    await queue.put(data)
            await queue.put(fmt.finish(reason(gen)))
        except Exception as exc:
            gen.fail(exc)
            await queue.put(exc)
        finally:
            await queue.put(None)

    tasks = [asyncio.create_task(pump(g, f)) for g, f in zip(gens, fmts, strict=True)]
    try:
        running = len(tasks)
        while running:
            item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, Exception):
                yield error_event(item)
                return
            else:
                yield item
        if fmts[0].include_usage:
            yield fmts[0].usage(total_usage([g.final_usage() for g in gens]))
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
