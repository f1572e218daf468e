"""The hot path of the REST API: POST /v1/completions and /v1/chat/completions as a bare ASGI
app in front of FastAPI.

Those two routes are the per-request work of the system. Through FastAPI each one also paid
for the middleware stack, routing, dependency solving and a second pass over the body: 0.1 to
0.3 ms of router CPU on every warm request, on a 2-core VM (see benchmarks/README.md). Here the
body is read once and validated once (`model_validate_json`), with the same API-key check, the
same validation messages and the same error mapping as the FastAPI routes. Every other request,
and the ASGI lifespan, goes to FastAPI, whose routes for these two paths still document them in
``/openapi.json``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from .api_schema import ChatCompletionRequest, CompletionRequest
from .errors import ApiError, is_expected, to_api_error
from .sse import ClientDisconnected

if TYPE_CHECKING:
    from .app import RouterService

log = logging.getLogger(__name__)

# A body this many times the bus's largest message cannot become a valid request.
BODY_LIMIT_FACTOR = 4
# A client that takes longer than this to send its body is dropped (slow-loris).
BODY_TIMEOUT_S = 60.0

Handler = Callable[[bytes, Receive], Awaitable[Response]]


class HotPath:
    """The ASGI app uvicorn runs: the two completion routes here, the rest to ``app``."""

    def __init__(self, app: ASGIApp, svc: RouterService) -> None:
        self.app = app
        self.svc = svc
        self.routes: dict[str, Handler] = {
            "/v1/completions": self._completion,
            "/v1/chat/completions": self._chat,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = None
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = self.routes.get(scope["path"])
        if handler is None:
            await self.app(scope, receive, send)
            return
        try:
            self.svc.api_keys.check(_header(scope, b"authorization"))
            body = await read_body(receive, self.body_limit())
            response = await handler(body, receive)
        except ClientDisconnected:
            return  # nobody to answer
        except Exception as exc:
            if not is_expected(exc):
                log.error("unhandled error", exc_info=exc)
            response = to_api_error(
                exc, retry_after=self.svc.router_settings.retry_after
            ).response()
        await response(scope, receive, send)

    def body_limit(self) -> int:
        return BODY_LIMIT_FACTOR * self.svc.bus.nc.max_payload

    async def _completion(self, body: bytes, receive: Receive) -> Response:
        request = CompletionRequest.model_validate_json(_json(body))
        return await self.svc.serving.completion(request, receive)

    async def _chat(self, body: bytes, receive: Receive) -> Response:
        request = ChatCompletionRequest.model_validate_json(_json(body))
        return await self.svc.serving.chat(request, receive)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def _json(body: bytes) -> bytes:
    if not body.strip():
        raise ApiError(400, "the request body is empty: send a JSON object", code="invalid_request")
    return body


async def read_body(receive: Receive, limit: int, timeout: float = BODY_TIMEOUT_S) -> bytes:
    """The whole request body; 413 past ``limit`` bytes, 408 when it takes past ``timeout``;
    `ClientDisconnected` when the client leaves first."""
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientDisconnected()
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise ApiError(
                        413, f"the request body is larger than {limit} bytes", code="too_large"
                    )
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
    except TimeoutError:
        raise ApiError(
            408, f"the request body took more than {timeout:g} s to arrive", code="timeout"
        ) from None
