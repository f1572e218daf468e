"""A scripted stand-in for the router's REST API, for the CLI's tests: a stdlib HTTP server on
127.0.0.1 in a thread, answering each (method, path) with the replies it was given, in order
(the last one repeats), and recording every request it got."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: Any = None
    events: list[Any] | None = None  # a server-sent event stream of these, then [DONE]
    gap_s: float = 0.0  # between two events


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    body: Any
    headers: dict[str, str]


@dataclass
class FakeRouter:
    routes: dict[tuple[str, str], list[Reply]] = field(default_factory=dict)
    requests: list[Seen] = field(default_factory=list)
    disconnected: threading.Event = field(default_factory=threading.Event)

    def on(self, method: str, path: str, *replies: Reply) -> FakeRouter:
        self.routes[(method, path)] = list(replies)
        return self

    def seen(self, method: str, path: str | None = None) -> list[Seen]:
        return [r for r in self.requests if r.method == method and path in (None, r.path)]

    def next_reply(self, method: str, path: str) -> Reply:
        replies = self.routes.get((method, path))
        if not replies:
            return Reply(404, {"error": {"message": f"no route {method} {path}", "code": None}})
        return replies.pop(0) if len(replies) > 1 else replies[0]

    def __enter__(self) -> FakeRouter:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                fake.requests.append(
                    Seen(
                        self.command,
                        self.path,
                        json.loads(raw) if raw else None,
                        {k.lower(): v for k, v in self.headers.items()},
                    )
                )
                reply = fake.next_reply(self.command, self.path)
                if reply.events is None:
                    data = json.dumps(reply.body).encode() if reply.body is not None else b""
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                self.send_response(reply.status)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                try:
                    for event in [*reply.events, "[DONE]"]:
                        line = event if isinstance(event, str) else json.dumps(event)
                        self.wfile.write(f"data: {line}\n\n".encode())
                        self.wfile.flush()
                        time.sleep(reply.gap_s)
                except OSError:  # the client closed the stream
                    fake.disconnected.set()
                self.close_connection = True

            do_GET = do_POST = do_PATCH = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"


def chunk(text: str) -> dict[str, Any]:
    """A chat completion chunk adding ``text``."""
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }
