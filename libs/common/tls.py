"""TLS for the services' connections to NATS and Redis (Valkey), from settings.

Three files per server, each optional: the CA that signed the server's certificate (else the
system's CAs), and a client certificate with its key for servers that verify clients (mutual
TLS). A ``tls://`` NATS URL or a ``rediss://`` Redis URL turns TLS on; so does naming a CA or a
client certificate. The server's name is always checked against its certificate.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from libs.protocol.errors import CredentialsError


@dataclass(frozen=True)
class TlsFiles:
    """``ca``, ``cert`` and ``key`` paths ("" when not given) and the settings they came from
    (``what``: ``SLLM_NATS_TLS`` or ``SLLM_REDIS_TLS``), for error messages."""

    what: str
    ca: str = ""
    cert: str = ""
    key: str = ""

    @property
    def given(self) -> bool:
        return bool(self.ca or self.cert or self.key)

    def problems(self) -> list[str]:
        """What is wrong with the files named (a settings check: before any connection)."""
        out = []
        if bool(self.cert) != bool(self.key):
            out.append(f"{self.what}_CERT and {self.what}_KEY go together (a client certificate)")
        for suffix, path in (("CA", self.ca), ("CERT", self.cert), ("KEY", self.key)):
            if path and not Path(path).is_file():
                out.append(f"{self.what}_{suffix}={path}: no such file")
        return out

    def context(self) -> ssl.SSLContext:
        """A client context verifying the server (and presenting the client certificate)."""
        try:
            ctx = ssl.create_default_context(cafile=self.ca or None)
            if self.cert:
                ctx.load_cert_chain(self.cert, self.key)
        except (ssl.SSLError, OSError) as exc:
            raise CredentialsError(f"{self.what}_* files unusable: {exc}") from None
        return ctx

    def redis_kwargs(self) -> dict[str, Any]:
        """redis-py's TLS options (for a ``rediss://`` URL)."""
        out: dict[str, Any] = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
        if self.ca:
            out["ssl_ca_certs"] = self.ca
        if self.cert:
            out["ssl_certfile"] = self.cert
            out["ssl_keyfile"] = self.key
        return out


def nats_tls(files: TlsFiles) -> ssl.SSLContext | None:
    """The context for NATS: None (plain, or nats-py's default context for a ``tls://`` URL)
    unless files are named."""
    if not files.given:
        return None
    return files.context()


def redis_url_with_tls(url: str, files: TlsFiles) -> str:
    """``redis://`` becomes ``rediss://`` when TLS files are named (TLS is then meant)."""
    if files.given and url.startswith("redis://"):
        return "rediss://" + url.removeprefix("redis://")
    return url
