"""A body limit on every route: the outermost ASGI layer of the router.

The body is read here, counting bytes as they arrive, and handed on whole: past the limit the
client gets a 413 and nothing more is buffered (the server discards the rest), so a 400 MB
body costs the router no more memory than the limit. A ``Content-Length`` over the limit is
refused before a byte is read. Counting matters because chunked bodies have no length.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ApiError, too_large
from .hotpath import read_body
from .sse import ClientDisconnected

log = logging.getLogger(__name__)


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with a 413 in OpenAI's error shape."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            if _content_length(scope) > self.limit:
                raise too_large(self.limit)
            body = await read_body(receive, self.limit)
        except ClientDisconnected:
            return
        except ApiError as exc:
            log.info("%s %s refused: %s", scope["method"], scope["path"], exc.message)
            await exc.response()(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)


def _content_length(scope: Scope) -> int:
    for key, value in scope["headers"]:
        if key == b"content-length":
            text = bytes(value).decode("latin-1").strip()
            return int(text) if text.isdigit() else 0
    return 0


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` that gives the body once, then what the client sends next (a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
