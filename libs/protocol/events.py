"""Monitoring events published on ``<root>.events.<kind>`` as JSON.

JSON (not msgpack) so that any NATS subscriber, ``nats sub`` included, can read them without
our code. Each event class names its ``kind``; the kind is also the subject suffix.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import Field

from .messages import Tier
from .schema import Message


class Event(Message):
    """Base of every event: its kind (also the subject suffix), when, and who published it."""

    kind: str
    ts: float = Field(default_factory=time.time)
    source: str = ""


class ServiceStartedEvent(Event):
    kind: Literal["service.started"] = "service.started"
    service: str
    version: str
    settings: dict[str, Any] = Field(default_factory=dict)


class ServiceStoppedEvent(Event):
    kind: Literal["service.stopped"] = "service.stopped"
    service: str
    reason: str = ""


class InstanceStartingEvent(Event):
    kind: Literal["instance.starting"] = "instance.starting"
    instance_id: str
    model: str
    worker_id: str
    node_id: str


class InstanceReadyEvent(Event):
    kind: Literal["instance.ready"] = "instance.ready"
    instance_id: str
    model: str
    worker_id: str
    node_id: str
    source_tier: Tier
    load_s: float


class InstanceStoppedEvent(Event):
    kind: Literal["instance.stopped"] = "instance.stopped"
    instance_id: str
    model: str
    worker_id: str
    reason: str = ""


class InstanceFailedEvent(Event):
    kind: Literal["instance.failed"] = "instance.failed"
    instance_id: str
    model: str
    worker_id: str
    error: str


class LoadPhaseEvent(Event):
    """One phase of a worker's load (``ensure`` at storage, ``read`` weights, ``build`` the
    model, ``tokenizer``...), with its duration and bytes moved."""

    kind: Literal["load.phase"] = "load.phase"
    instance_id: str
    model: str
    worker_id: str
    phase: str
    seconds: float
    bytes: int = 0
    tier: str = ""


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


class PlacementEvent(Event):
    """A scheduler decision, with every candidate's estimated startup time."""

    kind: Literal["scheduler.placed"] = "scheduler.placed"
    model: str
    instance_id: str
    worker_id: str
    node_id: str
    source_tier: Tier
    estimated_startup_s: float
    candidates: dict[str, float] = Field(default_factory=dict)


class DeploymentEvent(Event):
    kind: Literal["deployment.changed"] = "deployment.changed"
    name: str
    action: Literal["created", "updated", "deleted"]


class RequestCompletedEvent(Event):
    """A finished request with its latency breakdown (seconds)."""

    kind: Literal["request.completed"] = "request.completed"
    request_id: str
    model: str
    instance_id: str = ""
    worker_id: str = ""
    status: Literal["ok", "error", "cancelled"]
    finish_reason: str = ""
    queue_s: float = 0.0
    load_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    total_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str = ""


def event_kind(cls: type[Event]) -> str:
    """The kind an event class publishes under (its ``kind`` field's default)."""
    default = cls.model_fields["kind"].default
    if not isinstance(default, str) or not default:
        raise TypeError(f"{cls.__name__} must give `kind` a Literal default")
    return default


EVENT_TYPES: dict[str, type[Event]] = {
    event_kind(cls): cls
    for cls in (
        ServiceStartedEvent,
        ServiceStoppedEvent,
        InstanceStartingEvent,
        InstanceReadyEvent,
        InstanceStoppedEvent,
        InstanceFailedEvent,
        LoadPhaseEvent,
        FetchProgressEvent,
        FetchDoneEvent,
        EvictedEvent,
        PlacementEvent,
        DeploymentEvent,
        RequestCompletedEvent,
    )
}
