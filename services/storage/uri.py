"""Registry URIs: ``file://`` directories, ``http(s)://`` checkpoint directories and
``hf://org/name[@revision]`` Hugging Face Hub repositories, as far as the registry allow-list (``SLLM_REGISTRY_ALLOW``) lets them through."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from libs.common.hub_ids import HubSource
from libs.common.registry_allow import AllowList, FileSource, HttpSource, SourceRefused
from libs.protocol.errors import BadRequestError

DENY_ALL = AllowList((), ())


@dataclass(frozen=True)
class RegistrySource:
    """Where a checkpoint comes from: a local directory, an HTTP base URL ending in ``/`` or a
    Hugging Face Hub repository, with the allow-list that fetching it must still satisfy (symlinks, resolved addresses)."""

    uri: str
    kind: Literal["file", "http", "hub"]
    path: Path | None = None
    base_url: str = ""
    http: HttpSource | None = None
    hub: HubSource | None = None
    allow: AllowList = field(default=DENY_ALL, repr=False)


def parse_registry_uri(uri: str, allow: AllowList) -> RegistrySource:
    """Parse a checkpoint URI; anything but an absolute ``file://`` path, an ``http(s)://`` URL
    or an ``hf://`` repository that ``allow`` lets through is a `BadRequestError` naming the URI and why (from the URI
    alone: nothing on this node is looked at yet)."""
    try:
        src = allow.check(uri)
    except SourceRefused as exc:
        raise BadRequestError(f"checkpoint URI {uri!r}: {exc.reason}") from None
    if isinstance(src, FileSource):
        return RegistrySource(uri=uri, kind="file", path=src.path, allow=allow)
    if isinstance(src, HubSource):
        return RegistrySource(uri=uri, kind="hub", hub=src, allow=allow)
    return RegistrySource(uri=uri, kind="http", base_url=src.base_url, http=src, allow=allow)
