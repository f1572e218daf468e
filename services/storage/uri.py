"""Registry URIs: ``file://`` directories and ``http(s)://`` checkpoint directories."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from libs.protocol.errors import BadRequestError


@dataclass(frozen=True)
class RegistrySource:
    """Where a checkpoint comes from: a local directory or an HTTP base URL ending in ``/``."""

    uri: str
    kind: Literal["file", "http"]
    path: Path | None = None
    base_url: str = ""


def parse_registry_uri(uri: str) -> RegistrySource:
    """Parse a checkpoint URI; anything but an absolute ``file://`` path or ``http(s)://`` URL
    is a `BadRequestError` naming the URI."""
    try:
        parts = urlsplit(uri)
    except ValueError as exc:
        raise BadRequestError(f"checkpoint URI {uri!r} is malformed: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise BadRequestError(
                f"checkpoint URI {uri!r}: file:// URIs must name a local path (file:///abs/dir)"
            )
        if parts.query or parts.fragment:
            raise BadRequestError(f"checkpoint URI {uri!r}: file:// URIs take no query")
        raw = unquote(parts.path)
        if not raw.startswith("/") or "\x00" in raw:
            raise BadRequestError(f"checkpoint URI {uri!r}: the path must be absolute")
        return RegistrySource(uri=uri, kind="file", path=Path(raw))
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise BadRequestError(f"checkpoint URI {uri!r} has no host")
        if parts.query or parts.fragment:
            raise BadRequestError(
                f"checkpoint URI {uri!r}: a query or fragment cannot be joined with file names"
            )
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            raise BadRequestError(f"checkpoint URI {uri!r}: {exc}") from None
        base = uri if uri.endswith("/") else uri + "/"
        return RegistrySource(uri=uri, kind="http", base_url=base)
    raise BadRequestError(
        f"checkpoint URI {uri!r}: unsupported scheme {parts.scheme or '(none)'!r}; "
        "use file:///abs/dir or http(s)://host/dir/"
    )
