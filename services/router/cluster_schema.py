"""The body of ``GET /v1/cluster``: one snapshot of the cluster for the status page and
``sllm status`` (nodes with their tiers and workers, deployments, loads under way, events)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelBytes(_Out):
    model: str
    bytes: int


class TierOut(_Out):
    """What one storage tier of a node holds. ``capacity_bytes`` is None where the cluster
    state does not record it (the SSD tier: a directory on a disk shared with others)."""

    tier: Literal["dram", "ssd"]
    capacity_bytes: int | None = None
    used_bytes: int
    bandwidth_bytes_per_s: float | None = None
    models: list[ModelBytes] = Field(default_factory=list)


class InstanceOut(_Out):
    instance_id: str
    model: str
    status: str
    source_tier: str | None = None
    created_at: float
    ready_at: float | None = None
    load_s: float | None = None
    error: str = ""
    in_flight: int = 0  # requests this router streams from it now
    tokens_per_s: float = 0.0  # of requests completed on it lately (every router's)


# "free", "busy" (holds an instance), "down" (no heartbeat), "unregistered" (an instance record
# names a worker the state no longer has)
WorkerStatus = Literal["free", "busy", "down", "unregistered"]


class WorkerOut(_Out):
    worker_id: str
    device: str
    status: WorkerStatus
    instances: list[InstanceOut] = Field(default_factory=list)


class NodeOut(_Out):
    node_id: str
    registered: bool = True  # False: workers name a node whose storage never registered
    tiers: list[TierOut] = Field(default_factory=list)
    workers: list[WorkerOut] = Field(default_factory=list)


class DeploymentOut(_Out):
    name: str
    checkpoint_uri: str
    task: str = "generate"
    base: str = ""  # a LoRA adapter's base deployment
    min_instances: int
    max_instances: int
    keep_alive_s: float
    target_concurrency: int
    status: str = "ready"
    error: str = ""
    instances: int = 0  # live ones: loading or ready
    ready_instances: int = 0
    in_flight: int = 0  # requests this router holds (streaming or waiting for an instance)
    queued: int = 0  # of them, waiting for an instance to start
    requests: int = 0  # completed since this router started (every router's)
    tokens_per_s: float = 0.0


class ColdStartOut(_Out):
    """An instance loading now, with the last load phase it finished (empty: none yet)."""

    model: str
    instance_id: str
    worker_id: str
    node_id: str
    phase: str = ""
    started_at: float
    elapsed_s: float


class EventOut(_Out):
    time: float
    kind: str
    summary: str


class ClusterOut(_Out):
    object: Literal["cluster"] = "cluster"
    time: float
    router_id: str
    nodes: list[NodeOut] = Field(default_factory=list)
    deployments: list[DeploymentOut] = Field(default_factory=list)
    cold_starts: list[ColdStartOut] = Field(default_factory=list)
    events: list[EventOut] = Field(default_factory=list)
