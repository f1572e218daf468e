"""Each service process's Prometheus scrape endpoint, and the discovery of all of them.

A service with metrics (`Service.metrics_registry`) serves ``GET /metrics`` of its own
registry on ``SLLM_METRICS_ADDR`` (``host:port``; port 0: an ephemeral port, so that the many
processes of `sllm up` on one host never collide; empty: no endpoint). With
``SLLM_METRICS_KEYS`` set, a scrape must send one of them (``Authorization: Bearer <key>``),
as the router's ``/metrics`` asks.

Each service puts the address it serves on (`MetricsServer.address`) in its heartbeat
(``ServiceInfoReply.metrics_addr``), and the router answers Prometheus' HTTP service discovery
(``GET /metrics/targets``) from the live heartbeats: `sd_groups`.

The endpoint is a few lines of asyncio, not a thread: one request per connection, a render
of a small registry (a millisecond), nothing else served on the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import socket
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from libs.protocol.errors import BusError
from libs.protocol.messages import ServiceInfoReply
from libs.protocol.schema import decode_json

if TYPE_CHECKING:
    from libs.cluster import ClusterState

# A request's latency (time to first token, end to end): milliseconds to minutes.
LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)

log = logging.getLogger(__name__)

# What a request may take to arrive, and how large its head may be: a scraper sends a few
# hundred bytes at once; anything else is not a scraper.
REQUEST_TIMEOUT_S = 10.0
MAX_HEAD_BYTES = 16 * 1024
WILDCARDS = frozenset({"", "0.0.0.0", "::", "[::]"})
# The service kinds whose heartbeats `sd_groups` reads, in the order the answer lists them.
KINDS = ("router", "scheduler", "worker", "storage")


def parse_addr(addr: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``; an empty host: every interface) as (host, port);
    `ValueError` when it is not one."""
    host, sep, port_text = addr.strip().rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"not host:port: {addr!r}")
    port = int(port_text)
    if not 0 <= port < 65536:
        raise ValueError(f"port out of range: {addr!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"an IPv6 host goes in brackets: {addr!r}")
    return host, port


def join_addr(host: str, port: int) -> str:
    """``host:port``, an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def advertised(host: str, port: int) -> str:
    """The address others reach a server bound to ``host``:``port`` at: the host as given,
    unless it is a wildcard (every interface), then this machine's own address (its host
    name resolved, as in a container or a pod), or its name where that resolves to loopback."""
    if host not in WILDCARDS:
        return join_addr(host, port)
    name = socket.gethostname()
    try:
        ip = socket.gethostbyname(name)
    except OSError:
        return join_addr(name, port)
    return join_addr(name if ipaddress.ip_address(ip).is_loopback else ip, port)


class MetricsServer:
    """``GET /metrics`` of one registry over HTTP/1.1, one request per connection."""

    def __init__(self, registry: CollectorRegistry, *, keys: Iterable[str] = ()) -> None:
        self.registry = registry
        self._keys = [k.encode() for k in keys]
        self._server: asyncio.Server | None = None
        self.address = ""  # host:port, as others reach it (after `start`)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the metrics server is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self, addr: str) -> str:
        """Listen on ``addr`` (its first address, where a name resolves to several, so that
        port 0 means one port); returns the advertised address."""
        host, port = parse_addr(addr)
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            None if host in WILDCARDS else host,
            port,
            family=socket.AF_INET if host in ("", "0.0.0.0") else socket.AF_UNSPEC,
            type=socket.SOCK_STREAM,
            flags=socket.AI_PASSIVE,
        )
        family, kind, proto, _, sockaddr = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
            self._server = await asyncio.start_server(self._serve, sock=sock, limit=MAX_HEAD_BYTES)
        except BaseException:
            sock.close()
            raise
        self.address = advertised(host, self.port)
        log.info("metrics on http://%s/metrics", self.address)
        return self.address

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.LimitOverrunError, ValueError):
                return await _answer(writer, 431, b"request head too large\n")
            except (asyncio.IncompleteReadError, TimeoutError):
                return
            await _answer(writer, *self.respond(head))
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def respond(self, head: bytes) -> tuple[int, bytes, dict[str, str]]:
        """The answer to one request's head: (status, body, headers)."""
        line, _, rest = head.decode("latin-1").partition("\r\n")
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return 400, b"bad request\n", {}
        method, target = parts[0], parts[1]
        path = target.partition("?")[0]
        if path != "/metrics":
            return 404, b"not found: try /metrics\n", {}
        if method not in ("GET", "HEAD"):
            return 405, b"method not allowed\n", {"Allow": "GET, HEAD"}
        if not self._authorized(_headers(rest).get("authorization", "")):
            return 401, b"a metrics key is needed\n", {"WWW-Authenticate": "Bearer"}
        body = generate_latest(self.registry)
        headers = {"Content-Type": CONTENT_TYPE_LATEST, "Content-Length": str(len(body))}
        return 200, b"" if method == "HEAD" else body, headers

    def _authorized(self, authorization: str) -> bool:
        if not self._keys:
            return True
        scheme, _, token = authorization.partition(" ")
        given = token.strip().encode()
        # Every key compared, in constant time (as the router's `ApiKeys`).
        found = False
        for key in self._keys:
            found |= hmac.compare_digest(given, key)
        return scheme.lower() == "bearer" and found


def _headers(text: str) -> dict[str, str]:
    out = {}
    for line in text.split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            out[name.strip().lower()] = value.strip()
    return out


_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
}


async def _answer(
    writer: asyncio.StreamWriter,
    status: int,
    body: bytes,
    headers: Mapping[str, str] | None = None,
) -> None:
    fields = {"Content-Type": "text/plain; charset=utf-8", "Content-Length": str(len(body))}
    fields.update(headers or {})
    fields["Connection"] = "close"
    head = f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
    writer.write(head.encode("latin-1") + body)
    await writer.drain()


# --- discovery --------------------------------------------------------------------------------


def sd_groups(infos: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Prometheus HTTP service discovery (``http_sd_configs``): one target group per service
    that serves metrics, labelled with its kind, instance id and node (where it has one).
    ``infos``: the services' heartbeats (`ServiceInfoReply` as a dict)."""
    groups = []
    for info in infos:
        addr = info.get("metrics_addr") or ""
        if not addr:
            continue  # a service without metrics (or one from before they existed)
        labels = {"service": str(info["kind"]), "instance": str(info["instance_id"])}
        if info.get("node_id"):
            labels["node"] = str(info["node_id"])
        groups.append({"targets": [addr], "labels": labels})
    return groups


async def discover(state: ClusterState) -> list[dict[str, Any]]:
    """`sd_groups` of every live service's heartbeat in the cluster state; a heartbeat that
    does not parse is left out."""
    infos = []
    for kind in KINDS:
        beats = await state.live_services(kind)
        for _, raw in sorted(beats.items()):
            with contextlib.suppress(BusError):
                infos.append(decode_json(raw, ServiceInfoReply).model_dump())
    return sd_groups(infos)
