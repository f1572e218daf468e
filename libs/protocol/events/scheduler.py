"""The scheduler's decisions and findings: placements, scaling, cold starts, estimates against
measured loads, prefetches, repaired records."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..messages import Tier
from ..schema import Message
from .base import Event


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


class RecordRepairedEvent(Event):
    """The scheduler's reconciliation found records that contradict each other and repaired
    them: freed ``worker_id`` (reserved for an instance that is not its) and/or deleted the
    record of ``instance_id`` (nothing backs it). ``problem`` is what was wrong (see
    `services/scheduler/reconcile.py`), ``detail`` says it in words."""

    kind: Literal["scheduler.repaired"] = "scheduler.repaired"
    problem: str
    worker_id: str
    instance_id: str
    model: str = ""
    freed_worker: bool
    deleted_record: bool
    detail: str = ""
