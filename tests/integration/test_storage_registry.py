"""The storage service against hostile registries: endless and dripping bodies, redirects,
other protocols' banners, names that resolve to loopback, local paths outside the allow-list.
Reads stop at their bounds, memory stays flat, and errors say nothing the far end said."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from libs.common.embedded import EmbeddedNats, EmbeddedRedis
from libs.protocol import Bus
from libs.protocol.endpoints import STORAGE_ENSURE
from libs.protocol.errors import (
    BadRequestError,
    BusError,
    BusTimeoutError,
    CorruptError,
    UnavailableError,
)
from libs.protocol.messages import EnsureReply, EnsureRequest
from services.storage.app import StorageService
from services.storage.registry_http import MAX_REGISTRY_INDEX_BYTES
from services.storage.settings import StorageSettings
from tests.unit.storage.fake_checkpoint import write_fake_checkpoint

from .probes import peak_rss, request_when_up
from .service_processes import storage_env

pytestmark = pytest.mark.integration

NODE = "node-r"
BLOCK = b"\0" * (64 << 10)
SECRET = "SECRET-7f3a"  # what a hostile server says: never in an error a client sees


class Hostile(BaseHTTPRequestHandler):
    """A registry that misbehaves by path; ``good`` is a fake checkpoint to serve in part."""

    good: Path
    seen: list[str]

    def do_GET(self) -> None:
        self.seen.append(self.path)
        try:
            self._answer(self.path.strip("/").split("/"))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading: that is the point

    def _answer(self, parts: list[str]) -> None:
        kind, name = parts[0], parts[-1]
        if kind == "endless-index" or (kind == "endless-part" and name.endswith(".bin")):
            self._headers()  # no Content-Length: the body ends when we say so, i.e. never
            if name.endswith(".bin"):
                self.wfile.write((self.good / name).read_bytes())
            while True:
                self.wfile.write(BLOCK)
        elif kind == "drip":
            self._headers()
            while True:
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.05)
        elif kind == "redirect":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif kind == "echo":  # a valid index but for one file name
            doc = json.loads((self.good / "sllm-index.json").read_bytes())
            doc["partitions"][0]["file"] = f"../{SECRET}"
            body = json.dumps(doc).encode()
            self._headers(len(body))
            self.wfile.write(body)
        elif kind == "error":
            body = f"<h1>{SECRET}</h1>".encode()
            self.send_response(500)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            data = (self.good / name).read_bytes()
            self._headers(len(data))
            self.wfile.write(data)

    def _headers(self, length: int | None = None) -> None:
        self.send_response(200)
        if length is not None:
            self.send_header("Content-Length", str(length))
        else:
            self.send_header("Connection", "close")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hostile(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    good = write_fake_checkpoint(tmp_path / "good")
    seen: list[str] = []
    handler = type("Handler", (Hostile,), {"good": good, "seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


@pytest.fixture
async def storage(
    nats_server: EmbeddedNats, redis_server: EmbeddedRedis, root: str, tmp_path: Path,
    hostile: tuple[str, list[str]],
) -> AsyncIterator[StorageService]:  # fmt: skip
    # The hostile server is on loopback: this test allows it explicitly, and the ports of
    # NATS and Redis, to point the storage service at them.
    allow = [
        str(tmp_path / "registry"),
        hostile[0] + "/",
        nats_server.url.replace("nats://", "http://") + "/",
        redis_server.url.replace("redis://", "http://").rsplit("/", 1)[0] + "/",
    ]
    settings = StorageSettings.from_env(
        storage_env(
            nats_server.url,
            redis_server.url,
            root,
            node=NODE,
            ssd=tmp_path / "ssd",
            dram=tmp_path / "dram",
            allow=",".join(allow),
            SLLM_FETCH_TIMEOUT="1",
        )
    )
    svc = StorageService(settings)
    await svc.start()
    yield svc
    await svc.stop("test")


async def ensure(bus: Bus, uri: str) -> EnsureReply:
    req = EnsureRequest(model="m", checkpoint_uri=uri, tier="ssd")
    return await request_when_up(bus, STORAGE_ENSURE, req, timeout=30, node_id=NODE)


async def test_an_endless_index_is_cut_off_at_its_bound_with_memory_flat(
    storage: StorageService, bus: Bus, hostile: tuple[str, list[str]], tmp_path: Path
) -> None:
    base, seen = hostile
    t0 = time.monotonic()
    with peak_rss() as growth, pytest.raises(CorruptError, match="larger than") as info:
        await ensure(bus, f"{base}/endless-index/")
    assert str(MAX_REGISTRY_INDEX_BYTES) in info.value.message
    assert time.monotonic() - t0 < 10
    # Two attempts (a corrupt fetch earns one more), each reading at most the bound.
    assert seen.count("/endless-index/sllm-index.json") == 2
    assert growth[0] < 48 << 20, f"RSS grew by {growth[0] >> 20} MiB"
    assert list((tmp_path / "ssd").iterdir()) == []


async def test_an_endless_partition_is_cut_off_at_the_size_the_index_declares(
    storage: StorageService, bus: Bus, hostile: tuple[str, list[str]], tmp_path: Path
) -> None:
    base, seen = hostile
    with peak_rss() as growth, pytest.raises(CorruptError, match="longer than the index"):
        await ensure(bus, f"{base}/endless-part/")
    assert seen.count("/endless-part/part-00000.bin") == 2
    assert growth[0] < 48 << 20, f"RSS grew by {growth[0] >> 20} MiB"
    assert list((tmp_path / "ssd").iterdir()) == []


async def test_an_index_that_drips_forever_times_out(
    storage: StorageService, bus: Bus, hostile: tuple[str, list[str]]
) -> None:
    base, _ = hostile
    t0 = time.monotonic()
    with pytest.raises(BusTimeoutError, match="did not arrive within 1s"):
        await ensure(bus, f"{base}/drip/")
    assert time.monotonic() - t0 < 10


async def test_redirects_are_not_followed(
    storage: StorageService, bus: Bus, hostile: tuple[str, list[str]]
) -> None:
    base, seen = hostile
    with pytest.raises(UnavailableError, match="HTTP 302"):
        await ensure(bus, f"{base}/redirect/")
    assert seen == ["/redirect/sllm-index.json"]


@pytest.mark.parametrize("path", ["echo", "error"])
async def test_errors_never_echo_what_the_registry_said(
    storage: StorageService, bus: Bus, hostile: tuple[str, list[str]], path: str,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    base, _ = hostile
    with caplog.at_level(logging.WARNING), pytest.raises(BusError) as info:
        await ensure(bus, f"{base}/{path}/")
    assert SECRET not in info.value.message
    if path == "echo":  # the log has it, for the operator
        assert SECRET in caplog.text


@pytest.mark.parametrize("server", ["nats", "redis"])
async def test_a_registry_url_at_another_protocols_port_echoes_no_banner(
    storage: StorageService, bus: Bus, nats_server: EmbeddedNats, redis_server: EmbeddedRedis,
    server: str, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    url = nats_server.url if server == "nats" else redis_server.url.rsplit("/", 1)[0]
    with caplog.at_level(logging.WARNING), pytest.raises(BusError) as info:
        await ensure(bus, url.split("://")[1].join(["http://", "/x/"]))
    message = info.value.message
    assert isinstance(info.value, UnavailableError | BusTimeoutError), message
    for leak in ("INFO", "server_id", "nats", "ERR", "redis", "valkey"):
        assert leak not in message.replace(url.split("://")[1], ""), message
    assert "checkpoint" in caplog.text  # the details went to the log


async def test_a_host_name_that_resolves_to_loopback_is_refused_at_fetch_time(
    nats_server: EmbeddedNats, redis_server: EmbeddedRedis, root: str, tmp_path: Path,
    bus: Bus, hostile: tuple[str, list[str]],
) -> None:  # fmt: skip
    name = socket.gethostname().lower()
    try:
        resolved = {str(info[4][0]) for info in socket.getaddrinfo(name, 80)}
    except OSError:
        resolved = set()
    if not resolved or not all(a.startswith("127.") or a == "::1" for a in resolved):
        pytest.skip(f"this machine's name {name!r} does not resolve to loopback only")
    base, seen = hostile
    port = base.rsplit(":", 1)[1]
    uri = f"http://{name}:{port}/good/"
    settings = StorageSettings.from_env(
        storage_env(
            nats_server.url,
            redis_server.url,
            root,
            node=NODE,
            ssd=tmp_path / "ssd",
            dram=tmp_path / "dram",
            allow=f"http://{name}:{port}/",  # the name, not its address
        )
    )
    svc = StorageService(settings)
    await svc.start()
    try:
        with pytest.raises(BadRequestError, match="refused by the registry allow-list") as info:
            await ensure(bus, uri)
        assert "127.0.0.1" not in info.value.message
        assert seen == []  # refused before connecting
    finally:
        await svc.stop("test")


@pytest.mark.parametrize(
    "path", ["/etc/passwd", "/etc/no-such-file-here", "/proc/self/environ", "/root/.ssh"]
)
async def test_paths_outside_the_registry_get_one_answer_whether_they_exist_or_not(
    storage: StorageService, bus: Bus, path: str
) -> None:
    uri = Path(path).as_uri()
    with pytest.raises(BadRequestError) as info:
        await ensure(bus, uri)
    text = info.value.message.replace(repr(uri), "URI")
    assert text in (
        "checkpoint URI URI: the path is outside the registry directories (SLLM_REGISTRY_ALLOW)",
        "checkpoint URI URI: that path is never a registry source",
    )
