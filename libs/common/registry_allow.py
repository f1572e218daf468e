"""The registry allow-list (``SLLM_REGISTRY_ALLOW``): which checkpoint URIs may be fetched.

One torch-free module for both checks. The router checks a URI when it is deployed (syntax and
the allow-list: file paths and DNS belong to the storage node, so nothing is looked up there);
the storage service checks again when it fetches, adding what needs the node: where symlinks
lead (`AllowList.check_local`) and which addresses a host name resolves to
(`AllowList.resolve`), so that a name that rebinds to loopback or a cloud metadata address is
refused at the moment of the connection.

Entries are directories (file roots: a ``file://`` URI must name a path inside one) and
``http(s)://host[:port]/prefix`` URL prefixes (the URI's scheme, host and port must be equal,
its path must start with the prefix's segments). An HTTP source never reaches a loopback,
link-local, multicast, reserved or cloud metadata address unless its entry names that address
(an IP literal) or ``localhost``. Hugging Face Hub repositories (``hf://org/name[@revision]``,
`libs.common.hub_ids`) pass only under an ``hf://`` (every repository), ``hf://org/`` or
``hf://org/name`` entry. The reason `AllowList.check` gives is built from the URI
alone, so it may be shown to a client; the storage service keeps what the node found (where a
symlink leads, what a name resolves to) for its log.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .hub_ids import BadHubId, HubSource, hub_allowed, parse_hub_entry, parse_hub_uri

DEFAULT_REGISTRY_ALLOW = (".sllm/models",)
REGISTRY_ALLOW_HELP = (
    "comma-separated registry sources a checkpoint_uri may name: directories (relative: from "
    "the working directory), http(s)://host[:port]/prefix URL prefixes and Hugging Face Hub "
    "repositories (hf:// for all, hf://org/, hf://org/name); see README"
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# host, port -> the addresses a connection could reach (tests pass their own).
Resolver = Callable[[str, int], Sequence[str]]

# Cloud instance metadata and similar endpoints: AWS/GCP/Azure/OpenStack, AWS ECS task
# metadata, AWS IMDS over IPv6, Alibaba, Azure's wire server, Oracle.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",
        "169.254.170.2",
        "fd00:ec2::254",
        "100.100.100.200",
        "168.63.129.16",
        "192.0.0.192",
    )
)
# Linux connects 0.0.0.0/8 to the local host.
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Kernel interfaces that are files: never a registry, whatever the roots say.
_NEVER = (Path("/proc"), Path("/sys"), Path("/dev"))
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
_PERCENT_HEX = re.compile(r"%[0-9a-fA-F]{2}")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class SourceRefused(ValueError):
    """A checkpoint URI that is malformed or outside the allow-list."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class FileSource:
    """A ``file://`` URI: an absolute path without ``.``/``..`` segments."""

    uri: str
    path: Path


@dataclass(frozen=True)
class HttpSource:
    """An ``http(s)://`` URI (or allow-list prefix) split into what is compared."""

    uri: str
    scheme: str
    host: str  # lower case, no trailing dot; an IPv6 literal without brackets
    port: int
    path: str  # as given (percent-encoded), ending in "/"
    segments: tuple[str, ...]  # the path's decoded segments

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if self.port == _DEFAULT_PORTS[self.scheme] else f":{self.port}"
        return f"{self.scheme}://{host}{port}{self.path}"


Source = FileSource | HttpSource | HubSource


def parse_source(uri: str) -> Source:
    """Split a checkpoint URI; `SourceRefused` unless it is a well-formed ``file://``,
    ``http(s)://`` or ``hf://`` URI in its one canonical spelling (no ``..``, credentials,
    query...)."""
    if any(ord(c) < 0x21 or c in "\\\x7f" for c in uri):
        raise SourceRefused("the URI has spaces, control characters or backslashes")
    try:
        parts = urlsplit(uri)
    except ValueError as exc:
        raise SourceRefused(f"the URI is malformed ({exc})") from None
    scheme = parts.scheme.lower()
    if parts.query or parts.fragment or uri.endswith(("?", "#")):
        raise SourceRefused("a checkpoint URI takes no query or fragment")
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise SourceRefused("a file:// URI must name a local path (file:///abs/dir)")
        return FileSource(uri, _file_path(parts.path))
    if scheme in _DEFAULT_PORTS:
        return _http(uri, scheme, parts.netloc, parts.path)
    if scheme == "hf":
        try:
            return parse_hub_uri(uri)
        except BadHubId as exc:
            raise SourceRefused(exc.reason) from None
    raise SourceRefused(
        f"unsupported scheme {parts.scheme or '(none)'!r}; use file:///abs/dir, "
        "http(s)://host/dir/ or hf://org/name"
    )


def _file_path(raw: str) -> Path:
    try:
        path = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise SourceRefused("the path is not valid percent-encoded UTF-8") from None
    if not path.startswith("/") or "\x00" in path:
        raise SourceRefused("a file:// URI needs an absolute path")
    _check_segments(path.split("/")[1:])
    return Path(path)


def _check_segments(segments: Iterable[str]) -> None:
    for seg in segments:
        if seg in (".", ".."):
            raise SourceRefused("'.' and '..' path segments are not allowed")


def _http(uri: str, scheme: str, netloc: str, raw_path: str) -> HttpSource:
    if "@" in netloc:
        raise SourceRefused("credentials in the URI are not allowed")
    host_part, port = _split_port(netloc)
    host = _canonical_host(host_part)
    path = raw_path or "/"
    if not path.startswith("/") or "//" in path:
        raise SourceRefused("the URL path must be absolute, without empty segments")
    try:
        decoded = unquote(path, errors="strict")
    except UnicodeDecodeError:
        raise SourceRefused("the URL path is not valid percent-encoded UTF-8") from None
    if any(c in decoded for c in "\x00\\") or _PERCENT_HEX.search(decoded):
        raise SourceRefused("the URL path has an encoded NUL, backslash or percent sign")
    segments = decoded.split("/")[1:]
    if "/" in "".join(unquote(s) for s in path.split("/")):  # an encoded slash (%2F)
        raise SourceRefused("the URL path has an encoded '/'")
    _check_segments(segments)
    segments = [s for s in segments if s]  # the trailing slash
    if not path.endswith("/"):
        path += "/"
    return HttpSource(uri, scheme, host, port or _DEFAULT_PORTS[scheme], path, tuple(segments))


def _split_port(netloc: str) -> tuple[str, int | None]:
    if netloc.startswith("["):
        host, sep, rest = netloc[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise SourceRefused("a bracketed IPv6 host is malformed")
        if ":" not in host:
            raise SourceRefused("only an IPv6 address may be written in brackets")
        port_text = rest[1:] if rest else None
    else:
        host, sep, port_text_ = netloc.partition(":")
        port_text = port_text_ if sep else None
    if port_text is None:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise SourceRefused("the URL's port is not a TCP port (1-65535)")
    return host, int(port_text)


def _canonical_host(host: str) -> str:
    if not host:
        raise SourceRefused("the URL has no host")
    if ":" in host:  # from brackets: an IPv6 literal, without a zone (fe80::1%eth0)
        try:
            if "%" in host:
                raise ValueError("a zone id")
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            raise SourceRefused("the URL's IPv6 host is malformed") from None
    host = host.lower().removesuffix(".")
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    labels = host.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        raise SourceRefused("the URL's host is not an ASCII host name or IP address")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        # 2130706433, 0x7f.1, 127.1: IPv4 spellings the resolver accepts and a reader misses.
        raise SourceRefused("write an IPv4 host as four decimal numbers (a.b.c.d)")
    return host


def blocked_kind(ip: IPAddress) -> str | None:
    """Why an HTTP source must not reach ``ip`` unless its entry names it; None: it may."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return blocked_kind(embedded)
        if ip.is_site_local:
            return "site-local"
    if ip in METADATA_ADDRESSES:
        return "cloud metadata"
    for kind, hit in (
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("unspecified", ip.is_unspecified or ip in _THIS_NETWORK),
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved),
    ):
        if hit:
            return kind
    return None


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (`OSError` when it does not resolve)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True)
class AllowList:
    """The parsed ``SLLM_REGISTRY_ALLOW``: file roots, URL prefixes and Hub repositories."""

    roots: tuple[Path, ...]
    prefixes: tuple[HttpSource, ...]
    hubs: tuple[str, ...] = ()  # lower-case repository prefixes; "": every repository

    @classmethod
    def parse(cls, entries: Iterable[str], cwd: Path | None = None) -> AllowList:
        """`ValueError` naming a bad entry. Relative directories are from ``cwd``."""
        base = cwd or Path.cwd()
        roots: list[Path] = []
        prefixes: list[HttpSource] = []
        hubs: list[str] = []
        for entry in entries:
            try:
                if entry.lower().startswith("hf://"):
                    hubs.append(parse_hub_entry(entry))
                    continue
                if "://" in entry:
                    src = parse_source(entry)
                    if isinstance(src, HttpSource):
                        prefixes.append(src)
                        continue
                    if not isinstance(src, FileSource):
                        raise SourceRefused("a Hub entry starts with hf:// (lower case)")
                    path = src.path
                else:
                    path = Path(entry).expanduser()
                    _check_segments(path.parts)
            except (SourceRefused, BadHubId) as exc:
                raise ValueError(f"registry allow-list entry {entry!r}: {exc.reason}") from None
            roots.append(Path(os.path.normpath(base / path)))
        return cls(tuple(roots), tuple(prefixes), tuple(hubs))

    def check(self, uri: str) -> Source:
        """The parsed URI if the allow-list lets it through; `SourceRefused` otherwise.
        Looks at nothing but the URI (no file system, no DNS)."""
        src = parse_source(uri)
        if isinstance(src, HubSource):
            if not hub_allowed(self.hubs, src):
                raise SourceRefused(
                    f"the Hugging Face repository {src.repo_id} is not allowed "
                    "(SLLM_REGISTRY_ALLOW: hf://, hf://org/ or hf://org/name)"
                )
            return src
        if isinstance(src, FileSource):
            path = src.path
            if any(path.is_relative_to(never) for never in _NEVER):
                raise SourceRefused("that path is never a registry source")
            if not any(path.is_relative_to(root) for root in self.roots):
                raise SourceRefused(
                    "the path is outside the registry directories (SLLM_REGISTRY_ALLOW)"
                )
            return src
        if not self._prefixes_of(src):
            raise SourceRefused(
                f"{src.base_url} is not under an allowed registry URL (SLLM_REGISTRY_ALLOW)"
            )
        return src

    def _prefixes_of(self, src: HttpSource) -> list[HttpSource]:
        return [
            p
            for p in self.prefixes
            if (p.scheme, p.host, p.port) == (src.scheme, src.host, src.port)
            and src.segments[: len(p.segments)] == p.segments
        ]

    def check_local(self, path: Path) -> None:
        """``path`` with every symlink followed is still inside an allowed directory (the
        directories' own symlinks followed too); `SourceRefused` otherwise."""
        real = Path(os.path.realpath(path))
        roots = [Path(os.path.realpath(r)) for r in self.roots]
        if any(real.is_relative_to(never) for never in _NEVER) or not any(
            real.is_relative_to(root) for root in roots
        ):
            raise SourceRefused("the path leads outside the registry directories")

    def check_addresses(self, src: HttpSource, addresses: Iterable[str]) -> list[str]:
        """The addresses in canonical form if ``src`` may connect to every one of them."""
        entries = self._prefixes_of(src)
        named = {p.host for p in entries}
        out: list[str] = []
        for text in addresses:
            ip = ipaddress.ip_address(text.split("%", 1)[0])
            kind = blocked_kind(ip)
            explicit = str(ip) in named or (
                "localhost" in named and (ip.is_loopback or _mapped(ip).is_loopback)
            )
            if kind is not None and not explicit:
                raise SourceRefused(f"the registry host resolves to a blocked address ({kind})")
            out.append(str(ip))
        if not out:
            raise SourceRefused("the registry host has no address")
        return out

    def resolve(self, src: HttpSource, resolver: Resolver = system_resolver) -> list[str]:
        """Resolve ``src``'s host now and check every address (DNS rebinding: connect to
        these, not to the name again). `OSError` if it does not resolve."""
        return self.check_addresses(src, resolver(src.host, src.port))


def _mapped(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip
