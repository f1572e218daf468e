"""Events of a node's storage service: fetches, evictions, quarantined and skipped copies."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import Event


class FetchProgressEvent(Event):
    kind: Literal["storage.progress"] = "storage.progress"
    node_id: str
    model: str
    tier: str
    bytes_done: int
    bytes_total: int


class FetchDoneEvent(Event):
    kind: Literal["storage.fetched"] = "storage.fetched"
    node_id: str
    model: str
    tier: str
    source_tier: str
    bytes: int
    seconds: float


class EvictedEvent(Event):
    kind: Literal["storage.evicted"] = "storage.evicted"
    node_id: str
    model: str
    tier: str
    bytes: int
    reason: str = ""


class CopyQuarantinedEvent(Event):
    """A tier copy failed verification and was removed; the next ensure of the model serves
    another tier or fetches it again. ``file`` and ``offset`` say where, ``reason`` what."""

    kind: Literal["storage.quarantined"] = "storage.quarantined"
    node_id: str
    model: str
    tier: str
    file: str = ""
    offset: int | None = None
    reason: str = ""
    reporter: str = ""  # who found it: a worker id, or the storage service itself


class StorageSkippedEvent(Event):
    """A copy the storage service did not make because its tier could not make room without
    evicting a checkpoint in use (``pinned``) or because it is larger than the whole tier."""

    kind: Literal["storage.skipped"] = "storage.skipped"
    node_id: str
    model: str
    tier: str
    bytes: int
    reason: Literal["pinned", "too_large"]
    pinned: list[str] = Field(default_factory=list)
