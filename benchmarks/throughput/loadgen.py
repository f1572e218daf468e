"""The client: closed-loop streamed `/v1/completions` against one OpenAI-style server."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from .prompts import Prompt
from .stats import Request


@dataclass
class Endpoint:
    """One system under test: where it listens, its model's name, how it takes a prompt (token
    ids or text), and the request fields it gets on top of the common ones."""

    system: str
    base_url: str
    model: str
    prompt_as_ids: bool
    extra: dict[str, Any] = field(default_factory=dict)

    def body(self, prompt: Prompt, max_tokens: int, *, stream: bool = True) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": list(prompt.ids) if self.prompt_as_ids else prompt.text,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "stream": stream,
            **self.extra,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body


async def stream_one(
    http: httpx.AsyncClient, ep: Endpoint, prompt: Prompt, max_tokens: int, client: int
) -> Request:
    """One streamed completion, read to its end; its content chunks timed on arrival."""
    body = ep.body(prompt, max_tokens)
    rec = Request(client=client, prompt_tokens=len(prompt.ids), sent_at=time.perf_counter())
    try:
        async with http.stream("POST", "/v1/completions", json=body) as resp:
            if resp.status_code != 200:
                await resp.aread()
                rec.error = f"HTTP {resp.status_code}: {resp.text[:200]}"
                return rec
            async for line in resp.aiter_lines():
                now = time.perf_counter() - rec.sent_at
                if not line.startswith("data: "):
                    continue
                data = line[len("data: ") :]
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    rec.error = str(chunk["error"])[:200]
                    return rec
                if usage := chunk.get("usage"):
                    rec.completion_tokens = int(usage["completion_tokens"])
                if any(c.get("text") for c in chunk.get("choices") or ()):
                    rec.chunk_s.append(now)
        rec.done_s = time.perf_counter() - rec.sent_at
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        rec.error = repr(exc)[:200]
    return rec


async def closed_loop(
    ep: Endpoint,
    prompts: Sequence[Prompt],
    concurrency: int,
    per_client: int,
    max_tokens: int,
    timeout: float,
) -> tuple[list[Request], float]:
    """``concurrency`` clients, each sending ``per_client`` requests back to back (client ``c``
    takes ``prompts[c * per_client:][:per_client]``); returns every request and the wall time
    from the first send to the last end."""
    if len(prompts) < concurrency * per_client:
        raise ValueError(f"{len(prompts)} prompts for {concurrency} x {per_client} requests")
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    records: list[Request] = []
    async with httpx.AsyncClient(
        base_url=ep.base_url, timeout=httpx.Timeout(timeout, connect=10.0), limits=limits
    ) as http:

        async def client(c: int) -> None:
            for j in range(per_client):
                prompt = prompts[c * per_client + j]
                records.append(await stream_one(http, ep, prompt, max_tokens, c))

        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(concurrency)))
        wall = time.perf_counter() - t0
    return records, wall


def run_point(
    ep: Endpoint,
    prompts: Sequence[Prompt],
    concurrency: int,
    per_client: int,
    max_tokens: int,
    timeout: float = 900.0,
) -> tuple[list[Request], float]:
    """`closed_loop` on an event loop of its own."""
    return asyncio.run(closed_loop(ep, prompts, concurrency, per_client, max_tokens, timeout))


def accepts(ep: Endpoint, prompt: Prompt, field_name: str, timeout: float) -> tuple[bool, str]:
    """Whether the server takes ``ep.extra[field_name]``: one short request with it; on a 400
    or 422 the field is dropped from ``ep.extra``. Raises when the request fails otherwise.
    Also the first request of the server (a cold start for sllm: placement and load)."""
    body = ep.body(prompt, 4, stream=False)
    r = httpx.post(f"{ep.base_url}/v1/completions", json=body, timeout=timeout)
    if r.status_code in (400, 422) and field_name in ep.extra:
        del ep.extra[field_name]
        detail = f"HTTP {r.status_code}: {r.text[:200]}"
        body = ep.body(prompt, 4, stream=False)
        r = httpx.post(f"{ep.base_url}/v1/completions", json=body, timeout=timeout)
        if r.status_code != 200:
            raise RuntimeError(f"{ep.system}: HTTP {r.status_code}: {r.text[:500]}")
        return False, detail
    if r.status_code != 200:
        raise RuntimeError(f"{ep.system}: HTTP {r.status_code}: {r.text[:500]}")
    return True, ""
