"""Monitoring events published on ``<root>.events.<kind>`` as JSON, one module per area
(`service`, `instance`, `storage`, `scheduler`, `request`, `migration`), every name importable
from here.

JSON (not msgpack) so that any NATS subscriber, ``nats sub`` included, can read them without
our code. Each event class names its ``kind``; the kind is also the subject suffix.
"""

from __future__ import annotations

from .base import Event, event_kind
from .instance import (
    InstanceFailedEvent,
    InstanceIdleEvent,
    InstanceReadyEvent,
    InstanceStartingEvent,
    InstanceStoppedEvent,
    LoadPhaseEvent,
    LoadReportEvent,
)
from .migration import (
    MigrationAbortedEvent,
    MigrationCommittedEvent,
    MigrationRoundEvent,
    MigrationStartedEvent,
)
from .request import RequestCompletedEvent, RequestFailoverEvent
from .scheduler import (
    ColdStartEvent,
    ColdStartOption,
    EstimateEvent,
    PlacementEvent,
    PrefetchEvent,
    RecordRepairedEvent,
    ScaledEvent,
)
from .service import (
    DeploymentEvent,
    ServiceStartedEvent,
    ServiceStoppedEvent,
    StateRepublishedEvent,
)
from .storage import (
    CopyQuarantinedEvent,
    EvictedEvent,
    FetchDoneEvent,
    FetchProgressEvent,
    StorageSkippedEvent,
)

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
        CopyQuarantinedEvent,
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
        RecordRepairedEvent,
    )
}

__all__ = [
    "EVENT_TYPES",
    "Event",
    "ServiceStartedEvent",
    "ServiceStoppedEvent",
    "StateRepublishedEvent",
    "DeploymentEvent",
    "InstanceStartingEvent",
    "InstanceReadyEvent",
    "InstanceStoppedEvent",
    "InstanceIdleEvent",
    "InstanceFailedEvent",
    "LoadPhaseEvent",
    "LoadReportEvent",
    "FetchProgressEvent",
    "FetchDoneEvent",
    "EvictedEvent",
    "CopyQuarantinedEvent",
    "StorageSkippedEvent",
    "PlacementEvent",
    "ScaledEvent",
    "ColdStartOption",
    "ColdStartEvent",
    "EstimateEvent",
    "PrefetchEvent",
    "RecordRepairedEvent",
    "RequestCompletedEvent",
    "RequestFailoverEvent",
    "MigrationStartedEvent",
    "MigrationRoundEvent",
    "MigrationCommittedEvent",
    "MigrationAbortedEvent",
    "event_kind",
]
