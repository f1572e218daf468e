"""``POST /v1/embeddings``: the inputs go to ready instances of an embedding model in parts of
at most `MAX_EMBED_INPUTS`, waiting for a cold start like a generation does, and the vectors
come back in OpenAI's shape (floats, or base64 of little-endian float32)."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import uuid

import numpy as np

from libs.protocol.endpoints import WORKER_EMBED
from libs.protocol.errors import (
    BadRequestError,
    OverloadedError,
    UnavailableError,
)
from libs.protocol.messages import MAX_EMBED_INPUTS, EmbedReply, EmbedRequest

from .backend import Backend
from .embedding_schema import Embedding, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage
from .generation import Timings, check_servable, deployment_or_404
from .open_stream import INSTANCE_UNUSABLE, MAX_UNUSABLE, SUSPECT_S, acquire

log = logging.getLogger(__name__)


class EmbeddingServing:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    async def create(self, body: EmbeddingRequest) -> EmbeddingResponse:
        b = self.backend
        spec = await deployment_or_404(b.view, body.model)
        check_servable(spec)
        if spec.task != "embed":
            raise BadRequestError(
                f"{body.model!r} does not produce embeddings (task {spec.task!r}): deploy an "
                "embedding model with task 'embed'",
                detail={"param": "model"},
            )
        texts, ids = body.inputs()
        request_id = f"embd-{uuid.uuid4().hex}"
        deadline = time.monotonic() + b.settings.start_timeout
        parts = [
            EmbedRequest(
                request_id=f"{request_id}-{k}",
                model=spec.name,
                texts=texts[i : i + MAX_EMBED_INPUTS] if texts is not None else None,
                token_ids=ids[i : i + MAX_EMBED_INPUTS] if ids is not None else None,
                keep_alive_s=spec.keep_alive_s,
            )
            for k, i in enumerate(range(0, len(texts or ids or ()), MAX_EMBED_INPUTS))
        ]
        if b.demand is not None:
            b.demand.begin(spec.name)
        try:
            replies = await asyncio.gather(*(self._embed(part, deadline) for part in parts))
        finally:
            if b.demand is not None:
                b.demand.end(spec.name)
        dims = replies[0].dimensions
        if body.dimensions is not None and body.dimensions != dims:
            raise BadRequestError(
                f"{body.model!r} makes vectors of {dims} dimensions and does not support "
                f"dimensions={body.dimensions}",
                detail={"param": "dimensions"},
            )
        return _answer(body, replies)

    async def _embed(self, req: EmbedRequest, deadline: float) -> EmbedReply:
        """One part on one instance: the least loaded ready one (a cold start waited for), a
        busy one left for another, an unusable one skipped (as `open_stream` does)."""
        b = self.backend
        avoid: set[str] = set()
        unusable = 0
        while True:
            inst = await acquire(
                b, req.model, avoid, deadline=deadline, times=Timings(), request_id=req.request_id
            )
            b.view.begin(inst.instance_id)
            try:
                reply: EmbedReply = await b.bus.request(
                    WORKER_EMBED,
                    req,
                    worker_id=inst.worker_id,
                    timeout=max(b.settings.request_timeout, b.settings.stream_idle_timeout),
                )
                return reply
            except OverloadedError:
                avoid.add(inst.instance_id)
            except INSTANCE_UNUSABLE as exc:
                b.view.suspect(inst.instance_id, SUSPECT_S)
                b.view.changed(req.model)
                unusable += 1
                log.info("instance %s unusable for %s: %s", inst.instance_id, req.model, exc)
                if unusable >= MAX_UNUSABLE:
                    raise UnavailableError(
                        f"no usable instance of {req.model!r}: {exc.message}",
                        detail={"model": req.model},
                    ) from None
            finally:
                b.view.end(inst.instance_id)


def _answer(body: EmbeddingRequest, replies: list[EmbedReply]) -> EmbeddingResponse:
    data: list[Embedding] = []
    tokens = 0
    for reply in replies:
        rows = np.frombuffer(reply.vectors, dtype="<f4").reshape(len(reply.tokens), -1)
        tokens += sum(reply.tokens)
        for row in rows:
            value: list[float] | str = (
                base64.b64encode(row.tobytes()).decode("ascii")
                if body.encoding_format == "base64"
                else [float(x) for x in row]
            )
            data.append(Embedding(index=len(data), embedding=value))
    return EmbeddingResponse(
        data=data,
        model=body.model,
        usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
    )
