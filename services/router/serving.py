"""OpenAI serving: chat and text completions (streamed or whole, chats calling tools too) and
the model list, on top of `Generation`."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Receive

from libs.protocol.errors import BadRequestError
from libs.protocol.messages import ChatMessage, GenerateRequest, SamplingParams, TokenLogprob
from libs.protocol.schema import encode

from .api_schema import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from .backend import Backend
from .choices import fan_out, merge_whole, merged_events, total_usage
from .cluster import read
from .errors import to_api_error, validation_message
from .generation import Generation
from .progress import FIRST_PROGRESS_S, PROGRESS_EVERY_S, settled
from .progress import comment as progress_comment
from .responses import AnswerFormat, ChatFormat, CompletionFormat, ToolCallFormat
from .sse import DONE, ClientDisconnected, EventStreamResponse, event, run_until_disconnect

# Status of an answer nobody reads any more (nginx's "client closed request").
CLIENT_CLOSED = 499


class OpenAIServing:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    async def models(self) -> ModelList:
        state = self.backend.view.state
        specs = await read("deployments", state.deployments)
        return ModelList(
            data=[
                ModelCard(id=s.name, created=int(s.created_at), parent=s.base or None)
                for s in specs
            ]
        )

    async def chat(self, body: ChatCompletionRequest, receive: Receive) -> Response:
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        plan = body.tool_plan
        req = self._request(
            request_id,
            body.model,
            body.params(self.backend.settings.default_max_tokens),
            messages=body.bus_messages(),
            tools_json=plan.tools_json(),
            keep_alive_s=body.keep_alive,
        )

        def fmt(index: int) -> ChatFormat:
            args = (request_id, body.model, body.include_usage, req.params)
            if plan.mode == "none":
                return ChatFormat(*args, index=index)
            return ToolCallFormat(*args, plan, index=index)

        return await self._serve_n(
            req, fmt, body.n or 1, bool(body.stream), receive, progress=body.include_progress
        )

    async def completion(self, body: CompletionRequest, receive: Receive) -> Response:
        request_id = f"cmpl-{uuid.uuid4().hex}"
        prompt = body.text_or_ids()
        keep = body.keep_alive
        if isinstance(prompt, str):
            req = self._request(
                request_id, body.model, body.params(), prompt=prompt, keep_alive_s=keep
            )
        else:
            req = self._request(
                request_id, body.model, body.params(), prompt_token_ids=prompt, keep_alive_s=keep
            )

        def fmt(index: int) -> CompletionFormat:
            args = (request_id, body.model, body.include_usage, req.params)
            return CompletionFormat(*args, index=index)

        return await self._serve_n(
            req, fmt, body.n or 1, bool(body.stream), receive, progress=body.include_progress
        )

    def _request(
        self,
        request_id: str,
        model: str,
        params: SamplingParams,
        *,
        prompt: str | None = None,
        messages: list[ChatMessage] | None = None,
        prompt_token_ids: list[int] | None = None,
        tools_json: str = "",
        keep_alive_s: float | None = None,
    ) -> GenerateRequest:
        if params.seed is None:
            # Fixed here, not by the worker: a generation resumed elsewhere after a failover
            # then samples exactly what the uninterrupted one would have.
            params = params.model_copy(update={"seed": secrets.randbits(63)})
        try:
            req = GenerateRequest(
                request_id=request_id,
                model=model,
                prompt=prompt,
                messages=messages,
                prompt_token_ids=prompt_token_ids,
                tools_json=tools_json,
                params=params,
                keep_alive_s=keep_alive_s,
            )
        except ValidationError as exc:
            message, param = validation_message(exc.errors())
            raise BadRequestError(message, detail={"param": param or ""}) from None
        size = len(prompt or "") + len(tools_json) + sum(_size(m) for m in messages or ())
        limit = self.backend.bus.nc.max_payload
        if size * 2 > limit and len(encode(req)) > limit:
            raise BadRequestError(
                f"the prompt is too large for the message bus ({limit} bytes at most)",
                detail={"param": "messages" if messages else "prompt"},
            )
        return req

    async def _serve_n(
        self,
        req: GenerateRequest,
        fmt: Callable[[int], AnswerFormat],
        n: int,
        stream: bool,
        receive: Receive,
        *,
        progress: bool = False,
    ) -> Response:
        """Serve one choice, or ``n`` (see `choices`)."""
        if n == 1:
            return await self._serve(req, fmt(0), stream, receive, progress)
        gens = [Generation(self.backend, r) for r in fan_out(req, n)]
        fmts = [fmt(i) for i in range(n)]

        async def finish_all() -> None:
            await asyncio.gather(*(g.finish() for g in gens))

        try:
            if stream:
                starting = asyncio.gather(*(g.start() for g in gens))
                pending = await self._start(receive, starting, progress)
                events = self._events_n(gens, fmts)
                if pending is not None:

                    def fail_all(exc: BaseException) -> None:
                        for g in gens:
                            g.fail(exc)

                    events = self._progress(lambda: gens[0].model, pending, events, fail_all)
                return EventStreamResponse(events, lambda _: finish_all())
            results = await run_until_disconnect(
                receive, asyncio.gather(*(self._whole_text(g) for g in gens))
            )
        except ClientDisconnected:
            await finish_all()
            return Response(status_code=CLIENT_CLOSED)
        except Exception as exc:
            for g in gens:
                g.fail(exc)
            await finish_all()
            raise
        usages = [g.final_usage() for g in gens]
        answers = [
            f.whole(text, logprobs, _openai_reason(g), u)
            for f, g, (text, logprobs), u in zip(fmts, gens, results, usages, strict=True)
        ]
        return JSONResponse(
            merge_whole(answers, total_usage(usages)), background=BackgroundTask(finish_all)
        )

    async def _events_n(
        self, gens: list[Generation], fmts: list[AnswerFormat]
    ) -> AsyncIterator[bytes]:
        retry = self.backend.settings.retry_after

        def error(exc: Exception) -> bytes:
            return event(to_api_error(exc, retry_after=retry).body())

        async for data in merged_events(gens, fmts, _openai_reason, error):
            yield data
        yield DONE

    async def _serve(
        self,
        req: GenerateRequest,
        fmt: AnswerFormat,
        stream: bool,
        receive: Receive,
        progress: bool = False,
    ) -> Response:
        gen = Generation(self.backend, req)
        try:
            if stream:
                pending = await self._start(receive, gen.start(), progress)
                events = self._events(gen, fmt)
                if pending is not None:
                    events = self._progress(lambda: gen.model, pending, events, gen.fail)
                return EventStreamResponse(events, lambda _: gen.finish())
            # One disconnect watch for the whole answer (not one to start, one to collect).
            text, logprobs = await run_until_disconnect(receive, self._whole_text(gen))
        except ClientDisconnected:
            await gen.finish()
            return Response(status_code=CLIENT_CLOSED)
        except Exception as exc:
            gen.fail(exc)
            await gen.finish()
            raise
        # The accounting (metrics, the request.completed event) runs once the answer is sent:
        # the event's publication is not on the client's path.
        return JSONResponse(
            fmt.whole(text, logprobs, _openai_reason(gen), gen.final_usage()),
            background=BackgroundTask(gen.finish),
        )

    async def _start(
        self, receive: Receive, starting: Awaitable[Any], progress: bool
    ) -> asyncio.Future[Any] | None:
        """Await the start of an answer. With ``progress``, only for `FIRST_PROGRESS_S`: a start
        still under way then (a cold start) comes back, for the answer to stream progress while
        it runs; one that ended already answers as without progress (an error: its status)."""
        if not progress:
            await run_until_disconnect(receive, starting)
            return None
        task = asyncio.ensure_future(starting)
        try:
            await run_until_disconnect(receive, asyncio.wait({task}, timeout=FIRST_PROGRESS_S))
        except BaseException:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise
        if task.done():
            task.result()
            return None
        return task

    async def _progress(
        self,
        model: Callable[[], str],
        starting: asyncio.Future[Any],
        events: AsyncIterator[bytes],
        fail: Callable[[BaseException], None],
    ) -> AsyncIterator[bytes]:
        """Progress comments until ``starting`` ends, then ``events`` (or its error as an
        error event). ``model()``: the model whose start it waits for, read each time (an
        adapter's request waits for its base's, known once its deployment is read)."""
        since = time.monotonic()
        last = None
        try:
            while not starting.done():
                last = settled(last, self.backend.starts.progress(model(), since))
                yield progress_comment(last)
                await asyncio.wait({starting}, timeout=PROGRESS_EVERY_S)
            exc = starting.exception()
        finally:
            if not starting.done():
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
        if exc is not None:
            fail(exc)
            yield event(to_api_error(exc, retry_after=self.backend.settings.retry_after).body())
            yield DONE
            return
        async for data in events:
            yield data

    async def _whole_text(self, gen: Generation) -> tuple[str, list[TokenLogprob]]:
        """Start ``gen`` and gather its text, and its tokens' logprobs, to the end."""
        await gen.start()
        parts = []
        logprobs: list[TokenLogprob] = []
        while (chunk := await gen.next_chunk()) is not None:
            parts.append(chunk.text)
            logprobs.extend(chunk.logprobs or ())
        return "".join(parts), logprobs

    async def _events(self, gen: Generation, fmt: AnswerFormat) -> AsyncIterator[bytes]:
        for opening in fmt.opening():
            yield opening
        try:
            while (chunk := await gen.next_chunk()) is not None:
                if (data := fmt.tokens(chunk)) is not None:
                    yield data
            yield fmt.finish(_openai_reason(gen))
            if fmt.include_usage:
                yield fmt.usage(gen.final_usage())
        except Exception as exc:
            # Headers are sent: the error travels as an event (the openai client raises it).
            gen.fail(exc)
            yield event(to_api_error(exc, retry_after=self.backend.settings.retry_after).body())
        yield DONE


def _size(message: ChatMessage) -> int:
    return len(message.content) + sum(len(c.arguments) for c in message.tool_calls)


def _openai_reason(gen: Generation) -> str:
    return "length" if gen.finish_reason == "length" else "stop"
