"""Answers of the running system as a client reads them: a streamed one (SSE, read to the end)
and a whole one."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from .cluster import UpCluster

TIMEOUT_S = 300.0


@dataclass
class Answer:
    text: str
    finish: str | None
    completion_tokens: int
    request_id: str = field(default="", compare=False)


async def streamed(
    cluster: UpCluster,
    path: str,
    body: dict[str, Any],
    *,
    on_chunk: Callable[[int], object] | None = None,
) -> Answer:
    """A streamed answer (with usage), read to the end; ``on_chunk(n)`` runs after the n-th
    chunk. Chat deltas and completion texts alike."""
    parts: list[str] = []
    finish, usage, request_id, n = None, 0, "", 0
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    async with (
        httpx.AsyncClient(timeout=TIMEOUT_S) as client,
        client.stream("POST", cluster.base_url + path, json=body) as resp,
    ):
        assert resp.status_code == 200, await resp.aread()
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line.removeprefix("data: "))
            assert "error" not in chunk, chunk
            request_id = chunk["id"]
            if chunk.get("usage"):
                usage = chunk["usage"]["completion_tokens"]
            for choice in chunk["choices"]:
                delta = choice.get("delta", {}).get("content") or choice.get("text") or ""
                parts.append(delta)
                finish = choice.get("finish_reason") or finish
            n += 1
            if on_chunk is not None:
                on_chunk(n)
    return Answer("".join(parts), finish, usage, request_id)


async def whole(cluster: UpCluster, path: str, body: dict[str, Any]) -> Answer:
    async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
        resp = await client.post(cluster.base_url + path, json=body)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    choice = out["choices"][0]
    text = choice["message"]["content"] if "message" in choice else choice["text"]
    return Answer(text, choice["finish_reason"], out["usage"]["completion_tokens"], out["id"])
