"""GETs from an ``http(s)://`` registry, hardened: the host name is resolved once and every
address checked against the allow-list (`AllowList.resolve`), connections go to those checked
addresses (a name that rebinds later is not asked again), redirects are not followed, reads
are bounded, and errors tell the client only what it gave us (the URI) and the HTTP status:
what the far end said goes to this service's log. Blocking: callers run these in threads."""

from __future__ import annotations

import contextlib
import http.client
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from urllib.parse import quote

from libs.common.registry_allow import HttpSource, SourceRefused
from libs.protocol.errors import (
    BadRequestError,
    BusTimeoutError,
    CancelledError,
    CorruptError,
    NotFoundError,
    UnavailableError,
)

from .uri import RegistrySource

log = logging.getLogger(__name__)

# An index names files and sizes and holds one 16-hex-digit hash per chunk: a 405B model in
# bf16 (~810 GB) at the default 4 MiB chunks has ~190k hashes (~4 MB of JSON) and ~1.1k
# tensor entries. Anything larger is not an index we wrote.
MAX_REGISTRY_INDEX_BYTES = 8 << 20
_READ = 64 << 10


def refused(source: RegistrySource, why: str) -> BadRequestError:
    """The client's answer for a source the node refuses; ``why`` (what the node found) is
    logged only."""
    log.warning("checkpoint %s refused: %s", source.uri, why)
    return BadRequestError(
        f"checkpoint {source.uri}: refused by the registry allow-list "
        "(details in the storage service's log)"
    )


def resolve(source: RegistrySource) -> tuple[str, ...]:
    """The checked addresses of ``source``'s host, looked up now."""
    assert source.http is not None
    try:
        return tuple(source.allow.resolve(source.http))
    except SourceRefused as exc:
        raise refused(source, exc.reason) from None
    except (OSError, UnicodeError) as exc:
        log.warning("checkpoint %s: cannot resolve %s: %r", source.uri, source.http.host, exc)
        raise UnavailableError(f"checkpoint {source.uri}: cannot reach the registry") from None


class _Pinned(http.client.HTTPConnection):
    """A connection to ``address`` that speaks to (and, with TLS, verifies) ``host``."""

    def __init__(
        self, src: HttpSource, address: str, timeout: float, tls: ssl.SSLContext | None
    ) -> None:
        super().__init__(src.host, src.port, timeout=timeout)
        self.address = address
        self.tls = tls

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_hostname=self.host)
        self.sock = sock


@contextlib.contextmanager
def get(
    source: RegistrySource, addresses: tuple[str, ...], name: str, timeout: float
) -> Iterator[http.client.HTTPResponse]:
    """A 200 response for ``name`` under ``source``: `NotFoundError` on a 404, else a typed
    error that says no more than the status."""
    src = source.http
    assert src is not None
    uri = source.uri
    tls = ssl.create_default_context() if src.scheme == "https" else None
    target = src.path + quote(name)
    conn: _Pinned | None = None
    resp: http.client.HTTPResponse | None = None
    try:
        for i, address in enumerate(addresses):
            conn = _Pinned(src, address, timeout, tls)
            try:
                conn.request("GET", target, headers={"Accept-Encoding": "identity"})
                resp = conn.getresponse()
                break
            except (TimeoutError, OSError, http.client.HTTPException) as exc:
                conn.close()
                log.warning("checkpoint %s: GET %s from %s: %r", uri, target, address, exc)
                if i == len(addresses) - 1:
                    if isinstance(exc, TimeoutError):
                        raise BusTimeoutError(
                            f"checkpoint {uri}: the registry did not answer within {timeout:g}s"
                        ) from None
                    raise UnavailableError(
                        f"checkpoint {uri}: cannot reach the registry (details in the "
                        "storage service's log)"
                    ) from None
        assert resp is not None
        if resp.status != 200:
            log.warning("checkpoint %s: GET %s answered HTTP %d", uri, target, resp.status)
            if resp.status == 404:
                raise NotFoundError(f"checkpoint {uri}: {name} not found (HTTP 404)")
            raise UnavailableError(f"checkpoint {uri}: the registry answered HTTP {resp.status}")
        yield resp
    finally:
        if conn is not None:
            conn.close()


def read_index(
    source: RegistrySource, addresses: tuple[str, ...], name: str, timeout: float
) -> bytes:
    """The index, at most `MAX_REGISTRY_INDEX_BYTES` and within ``timeout`` in all."""
    uri = source.uri
    limit = MAX_REGISTRY_INDEX_BYTES
    too_big = CorruptError(f"checkpoint {uri}: the index is larger than {limit} bytes")
    deadline = time.monotonic() + timeout
    with get(source, addresses, name, timeout) as resp:
        length = resp.getheader("Content-Length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise too_big
        buf = bytearray()
        try:
            # read1: what has arrived, so that a body that drips meets the deadline.
            while chunk := resp.read1(min(_READ, limit + 1 - len(buf))):
                buf += chunk
                if len(buf) > limit:
                    raise too_big
                if time.monotonic() > deadline:
                    raise BusTimeoutError(
                        f"checkpoint {uri}: the index did not arrive within {timeout:g}s"
                    )
        except TimeoutError:
            raise BusTimeoutError(
                f"checkpoint {uri}: the registry stalled for {timeout:g}s"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            log.warning("checkpoint %s: reading the index: %r", uri, exc)
            raise UnavailableError(f"checkpoint {uri}: reading the index failed") from None
    return bytes(buf)


class Body:
    """A response body as copy_exact's reader, giving what has arrived rather than waiting for
    a full buffer: a body that drips still sees the cancel flag (an ensure that timed out)
    between reads, instead of holding a storage I/O thread until the far end stops."""

    def __init__(self, resp: http.client.HTTPResponse, cancel: threading.Event) -> None:
        self.resp = resp
        self.cancel = cancel

    def readinto(self, view: memoryview, /) -> int:
        if self.cancel.is_set():
            raise CancelledError("transfer cancelled")
        data = self.resp.read1(min(len(view), 1 << 20))
        view[: len(data)] = data
        return len(data)
