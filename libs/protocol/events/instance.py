"""Events of an instance's life (starting, ready, idle, stopped, failed) and of its load (each
phase, and what the whole load cost)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..messages import Tier
from .base import Event


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


class InstanceIdleEvent(Event):
    """An instance's last request in flight finished. ``keep_until`` (wall time) is when its
    keep-alive ends (None: kept indefinitely); ``requests`` counts requests it has taken, so
    that a reader can order this against other news of the same instance."""

    kind: Literal["instance.idle"] = "instance.idle"
    instance_id: str
    model: str
    worker_id: str
    keep_until: float | None
    requests: int = 0


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


class LoadReportEvent(Event):
    """What one load cost, for calibration: ``seconds`` from the load request to ready,
    ``one_off_s`` of it spent on a just-started worker's imports (not a per-load cost)."""

    kind: Literal["load.report"] = "load.report"
    instance_id: str
    model: str
    worker_id: str
    node_id: str
    source_tier: Tier
    bytes: int
    seconds: float
    one_off_s: float = 0.0
    phases: dict[str, float] = Field(default_factory=dict)
