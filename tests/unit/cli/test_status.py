"""`sllm status` and the CLI's API client, against a stdlib HTTP server on 127.0.0.1: the
tables, ``--json``, the key sent, and the exit code of each failure."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from libs.cli.api_client import ApiClient, ApiError, ApiUnreachable, exit_code, from_env
from libs.cli.main import main
from libs.cli.status import render_status, size, status
from libs.common.embedded import free_port

pytestmark = pytest.mark.unit

GIB = 1 << 30

SNAPSHOT: dict[str, Any] = {
    "object": "cluster",
    "time": 1000.0,
    "router_id": "router-1",
    "nodes": [
        {
            "node_id": "node-1",
            "registered": True,
            "tiers": [
                {
                    "tier": "dram",
                    "capacity_bytes": 8 * GIB,
                    "used_bytes": 2 * GIB,
                    "bandwidth_bytes_per_s": None,
                    "models": [{"model": "demo", "bytes": 2 * GIB}],
                },
                {
                    "tier": "ssd",
                    "capacity_bytes": None,
                    "used_bytes": 3 * GIB,
                    "bandwidth_bytes_per_s": None,
                    "models": [{"model": "big", "bytes": GIB}, {"model": "demo", "bytes": 2 * GIB}],
                },
            ],
            "workers": [
                {
                    "worker_id": "node-1-w0",
                    "device": "cpu",
                    "status": "busy",
                    "instances": [
                        {
                            "instance_id": "i-1",
                            "model": "demo",
                            "status": "ready",
                            "source_tier": "dram",
                            "created_at": 900.0,
                            "ready_at": 901.0,
                            "load_s": 1.0,
                            "error": "",
                            "in_flight": 2,
                            "tokens_per_s": 12.5,
                        }
                    ],
                },
                {"worker_id": "node-1-w1", "device": "cpu", "status": "free", "instances": []},
            ],
        }
    ],
    "deployments": [
        {
            "name": "demo",
            "checkpoint_uri": "file:///m/demo",
            "min_instances": 0,
            "max_instances": 2,
            "keep_alive_s": 300.0,
            "target_concurrency": 8,
            "status": "ready",
            "error": "",
            "instances": 1,
            "ready_instances": 1,
            "in_flight": 2,
            "queued": 0,
            "requests": 7,
            "tokens_per_s": 12.5,
        }
    ],
    "cold_starts": [
        {
            "model": "big",
            "instance_id": "i-2",
            "worker_id": "node-1-w1",
            "node_id": "node-1",
            "phase": "read",
            "started_at": 997.0,
            "elapsed_s": 3.0,
        }
    ],
    "events": [],
}


class Server:
    """Answers every request with ``reply`` (status, body bytes, content type); records the
    Authorization header it got."""

    def __init__(self) -> None:
        self.reply: tuple[int, bytes, str] = (
            200,
            json.dumps(SNAPSHOT).encode(),
            "application/json",
        )
        self.authorization: list[str | None] = []
        self.port = free_port()

    def __enter__(self) -> Server:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                server.authorization.append(self.headers.get("Authorization"))
                code, body, kind = server.reply
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PATCH = do_DELETE = _answer

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def server() -> Iterator[Server]:
    with Server() as s:
        yield s


def _error(status: int, message: str, code: str) -> tuple[int, bytes, str]:
    body = {"error": {"message": message, "type": "x", "param": None, "code": code}}
    return status, json.dumps(body).encode(), "application/json"


def test_tables_show_tiers_workers_deployments_and_loads() -> None:
    text = render_status(SNAPSHOT)
    lines = text.splitlines()
    assert lines[0] == "NODES"
    node = next(line for line in lines if line.startswith("node-1 "))
    assert "2.0 GiB / 8.0 GiB (25%)" in node
    assert "demo (2.0 GiB)" in node
    assert "big (1.0 GiB), demo (2.0 GiB)" in node
    ready = next(line for line in lines if "i-1" in line)
    assert ready.split() == [
        "node-1",
        "node-1-w0",
        "cpu",
        "busy",
        "demo",
        "i-1",
        "ready",
        "dram",
        "2",
        "12.5",
    ]
    free = next(line for line in lines if "node-1-w1" in line and "free" in line)
    assert free.split()[-1] == "-"
    demo = next(line for line in lines if line.startswith("demo "))
    assert demo.split() == ["demo", "ready", "1/1", "0-2", "2", "0", "7", "12.5"]
    assert "LOADS UNDER WAY" in lines
    load = lines[-1].split()
    assert load == ["big", "i-2", "node-1-w1", "node-1", "read", "3.0s"]


def test_empty_sections_say_none() -> None:
    text = render_status({"object": "cluster", "nodes": [], "deployments": [], "cold_starts": []})
    assert text.count("(none)") == 4


def test_sizes_read_as_a_person_reads_them() -> None:
    assert [size(None), size(0), size(1536), size(5 * GIB)] == ["-", "0 B", "1.5 KiB", "5.0 GiB"]


def test_status_prints_tables_and_sends_the_key(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLLM_API_KEY", "sk-admin")
    out, err = io.StringIO(), io.StringIO()
    assert status(server.url, False, out, err) == 0
    assert "node-1-w0" in out.getvalue()
    assert err.getvalue() == ""
    assert server.authorization == ["Bearer sk-admin"]


def test_status_json_prints_the_raw_snapshot(server: Server) -> None:
    out = io.StringIO()
    assert status(server.url, True, out, io.StringIO()) == 0
    assert json.loads(out.getvalue()) == SNAPSHOT


@pytest.mark.parametrize(("http", "code"), [(401, 4), (403, 4), (503, 1), (404, 1)])
def test_status_exit_code_of_an_error_answer(server: Server, http: int, code: int) -> None:
    server.reply = _error(http, "no entry", "nope")
    err = io.StringIO()
    assert status(server.url, False, io.StringIO(), err) == code
    assert "no entry" in err.getvalue()
    if code == 4:
        assert "SLLM_API_KEY" in err.getvalue()


def test_status_exits_3_when_nothing_listens() -> None:
    err = io.StringIO()
    assert status(f"http://127.0.0.1:{free_port()}", False, io.StringIO(), err) == 3
    assert "cannot reach" in err.getvalue()


def test_status_refuses_an_answer_that_is_not_a_snapshot(server: Server) -> None:
    server.reply = (200, b'{"object": "list"}', "application/json")
    assert status(server.url, False, io.StringIO(), io.StringIO()) == 1


def test_sllm_status_is_registered_and_its_usage_errors_exit_2(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--url", server.url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["router_id"] == "router-1"
    with pytest.raises(SystemExit) as exited:
        main(["status", "--no-such-flag"])
    assert exited.value.code == 2


def test_client_reads_the_openai_error_body(server: Server) -> None:
    server.reply = _error(409, "exists already", "conflict")
    with pytest.raises(ApiError) as raised:
        ApiClient(server.url, None, 5).post("/v1/deployments", {"name": "x"})
    assert (raised.value.status, raised.value.message, raised.value.code) == (
        409,
        "exists already",
        "conflict",
    )
    assert exit_code(raised.value) == 1


def test_client_reads_a_plain_text_error(server: Server) -> None:
    server.reply = (502, b"bad gateway", "text/plain")
    with pytest.raises(ApiError, match="bad gateway") as raised:
        ApiClient(server.url, None, 5).delete("/v1/deployments/x")
    assert raised.value.code is None


def test_client_streams_events_until_done(server: Server) -> None:
    events = [{"n": 1}, {"n": 2}]
    body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\ndata: {}\n\n"
    server.reply = (200, body.encode(), "text/event-stream")
    got = list(ApiClient(server.url, "k", 5).stream_post("/v1/chat/completions", {"x": 1}))
    assert got == events
    assert server.authorization == ["Bearer k"]


def test_client_raises_an_error_event_in_a_stream(server: Server) -> None:
    body = (
        'data: {"n": 1}\n\ndata: {"error": {"message": "worker died", "code": "unavailable"}}\n\n'
    )
    server.reply = (200, body.encode(), "text/event-stream")
    stream = ApiClient(server.url, None, 5).stream_post("/v1/completions", {})
    assert next(stream) == {"n": 1}
    with pytest.raises(ApiError, match="worker died") as raised:
        next(stream)
    assert raised.value.code == "unavailable"


def test_client_unreachable_is_typed_and_exits_3() -> None:
    with pytest.raises(ApiUnreachable) as raised:
        ApiClient(f"http://127.0.0.1:{free_port()}", None, 2).get("/v1/models")
    assert exit_code(raised.value) == 3


def test_client_defaults_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLLM_URL", raising=False)
    monkeypatch.delenv("SLLM_API_KEY", raising=False)
    assert from_env() == ("http://127.0.0.1:8343", None)
    monkeypatch.setenv("SLLM_URL", "http://router:9000/")
    monkeypatch.setenv("SLLM_API_KEY", "sk-1")
    assert from_env() == ("http://router:9000", "sk-1")
    assert from_env("http://other", "sk-2") == ("http://other", "sk-2")
