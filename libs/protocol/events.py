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


class StateRepublishedEvent(Event):
    """A service wrote back what it owns because the cluster state store lost its data."""

    kind: Literal["state.republished"] = "state.republished"
    service: str
    epoch: str  # the store's new epoch


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


class ScaledEvent(Event):
    """An autoscaling decision for one model: from how many live instances to how many, why
    (``demand``, ``min_instances``, ``idle``, ``preempted``...), and the instances it touched."""

    kind: Literal["scheduler.scaled"] = "scheduler.scaled"
    model: str
    from_instances: int
    to_instances: int
    reason: str
    instance_ids: list[str] = Field(default_factory=list)


class ColdStartOption(Message):
    """One way the scheduler could have started a cold model (see `ColdStartEvent`)."""

    kind: Literal["wait", "elsewhere", "migrate"]
    worker_id: str
    startup_s: float
    destination: str = ""
    pause_s: float = 0.0


class ColdStartEvent(Event):
    """How the scheduler started a cold model whose best worker was busy: ``chosen`` among
    every option it weighed (wait for the busy worker, another worker, or migrate the busy
    worker's running generations away first). ``moved``: the migrated request ids."""

    kind: Literal["scheduler.coldstart"] = "scheduler.coldstart"
    model: str
    chosen: ColdStartOption
    options: list[ColdStartOption] = Field(default_factory=list)
    moved: list[str] = Field(default_factory=list)


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
    failovers: int = 0  # times the generation was resumed elsewhere after its instance died


class RequestFailoverEvent(Event):
    """A generation whose instance died mid-stream, resumed on another instance from the prompt
    plus the ``tokens`` already sent (the client's stream goes on unbroken)."""

    kind: Literal["request.failover"] = "request.failover"
    request_id: str
    model: str
    from_instance_id: str
    from_worker_id: str
    to_instance_id: str
    to_worker_id: str
    tokens: int  # generated before the failure: recomputed, not generated again
    attempt: int  # 1 for the first failover of this request
    reason: str  # why the old instance counts as gone
    wait_s: float  # from the failure to the new instance's acknowledgement


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


class EstimateEvent(Event):
    """A placement's estimated startup time against the measured one (seconds, without the
    one-off worker start-up); ``error_ratio`` = (estimated - actual) / actual."""

    kind: Literal["scheduler.estimate"] = "scheduler.estimate"
    model: str
    instance_id: str
    node_id: str
    source_tier: Tier
    estimated_s: float
    actual_s: float
    error_ratio: float


class PrefetchEvent(Event):
    """The scheduler asked these nodes to hold a newly deployed model in their DRAM tier."""

    kind: Literal["scheduler.prefetch"] = "scheduler.prefetch"
    model: str
    node_ids: list[str]
    replicas: int


class MigrationStartedEvent(Event):
    """The source began moving one generation to another worker."""

    kind: Literal["migration.started"] = "migration.started"
    migration_id: str
    request_id: str
    instance_id: str  # the source instance
    worker_id: str
    destination_instance_id: str
    destination_worker_id: str
    tokens: int  # prompt + generated tokens at the start


class MigrationRoundEvent(Event):
    """One round done: ``round`` 0 is the first prefill of everything so far, later rounds
    are catch-up deltas; ``gap`` is how many tokens the source is ahead afterwards."""

    kind: Literal["migration.round"] = "migration.round"
    migration_id: str
    request_id: str
    instance_id: str
    round: int
    tokens_sent: int
    gap: int
    seconds: float


class MigrationCommittedEvent(Event):
    """The destination took over the stream (emitted by the destination once its first frame
    is out). ``pause_s``: from the source's last published frame to the destination's first
    (wall clocks of two machines: as good as their sync). ``cancel_subject`` and ``stream_id``
    name the new producer, for a consumer that wants to cancel it."""

    kind: Literal["migration.committed"] = "migration.committed"
    migration_id: str
    request_id: str
    source_instance_id: str
    source_worker_id: str
    instance_id: str  # the destination instance, now producing
    worker_id: str
    inbox: str
    start_seq: int
    rounds: int
    tokens_recomputed: int
    pause_s: float | None = None
    cancel_subject: str = ""
    stream_id: str = ""


class MigrationAbortedEvent(Event):
    """The generation stays where it was (or, when the source died, with whoever resumes it);
    ``side`` says who gave up."""

    kind: Literal["migration.aborted"] = "migration.aborted"
    migration_id: str
    request_id: str
    instance_id: str
    side: Literal["source", "destination"]
    reason: str


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
        StateRepublishedEvent,
        InstanceStartingEvent,
        InstanceReadyEvent,
        InstanceStoppedEvent,
        InstanceIdleEvent,
        InstanceFailedEvent,
        LoadPhaseEvent,
        FetchProgressEvent,
        FetchDoneEvent,
        EvictedEvent,
        PlacementEvent,
        ScaledEvent,
        ColdStartEvent,
        DeploymentEvent,
        RequestCompletedEvent,
        RequestFailoverEvent,
        StorageSkippedEvent,
        LoadReportEvent,
        EstimateEvent,
        PrefetchEvent,
        MigrationStartedEvent,
        MigrationRoundEvent,
        MigrationCommittedEvent,
        MigrationAbortedEvent,
    )
}
