"""Schemas of the records kept in Redis (cluster state). Key names are in `keys`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .messages import InstanceStatus, Tier
from .schema import Message


class InstanceRecord(Message):
    """One loaded (or loading) copy of a model on one worker."""

    instance_id: str
    model: str
    worker_id: str
    node_id: str
    status: InstanceStatus
    created_at: float
    ready_at: float | None = None
    source_tier: Tier | None = None
    load_s: float | None = None
    error: str = ""
    worker_epoch: int = 0  # the worker's epoch when it was reserved (0: unknown)
    # LoRA adapters resident on it (a base model's instance), most recently used last: the
    # router prefers an instance that holds a request's adapter.
    adapters: list[str] = Field(default_factory=list, max_length=1024)


class WorkerRecord(Message):
    """A worker as registered in Redis; ``instance_id`` is empty when it is free."""

    worker_id: str
    node_id: str
    device: str
    instance_id: str = ""
    alive: bool = False
    epoch: int = 0  # how many times it registered: a restarted worker has a new epoch


class NodeRecord(Message):
    """A node's storage tiers, as its storage service registered them."""

    node_id: str
    ssd_dir: str
    dram_dir: str
    dram_capacity_bytes: int = Field(ge=0)


class Locality(Message):
    """Which checkpoints a node holds, per tier (model -> bytes), and measured bandwidths."""

    node_id: str
    dram: dict[str, int] = Field(default_factory=dict)
    ssd: dict[str, int] = Field(default_factory=dict)
    bandwidth: dict[Literal["registry", "ssd", "dram"], float] = Field(default_factory=dict)
