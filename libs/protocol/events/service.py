"""Events of a service's life (started, stopped, re-published its state) and of deployments."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .base import Event


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
    """A service wrote back what it owns because the cluster state store lost its data (it
    came back empty: ``reason`` "reset"), or may have (it failed over to a replica, which
    replicates asynchronously: "failover")."""

    kind: Literal["state.republished"] = "state.republished"
    service: str
    epoch: str  # the store's epoch now
    reason: Literal["reset", "failover"] = "reset"


class DeploymentEvent(Event):
    kind: Literal["deployment.changed"] = "deployment.changed"
    name: str
    action: Literal["created", "updated", "deleted"]
