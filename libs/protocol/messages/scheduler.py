"""Messages to the scheduler: deployments, placement, and the routers' demand reports."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..schema import Message
from .common import InstanceStatus, Tier

DeploymentStatus = Literal["preparing", "ready", "failed"]
# What a deployment serves: text generation (completions, chat) or embeddings.
Task = Literal["generate", "embed"]
DeployMode = Literal["create", "upsert"]
# The knobs a PATCH may change (not the checkpoint: that is a new deployment).
KNOBS = ("min_instances", "max_instances", "keep_alive_s", "target_concurrency")


class DeploymentSpec(Message):
    """A model the cluster serves, with its autoscaling knobs (stored in Redis as-is).

    A LoRA adapter is a deployment too: ``base`` names the deployment whose instances serve
    it, and ``checkpoint_uri`` is the adapter's (a PEFT adapter directory). It has no
    instances of its own: its requests go to the base's, so its instance knobs stay at their
    defaults; ``keep_alive_s`` is what its requests ask of the base's instance.
    """

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/\-]*$")
    checkpoint_uri: str = Field(min_length=1, max_length=4096)
    min_instances: int = Field(default=0, ge=0, le=1024)
    max_instances: int = Field(default=1, ge=1, le=1024)
    keep_alive_s: float = Field(default=300.0, ge=0.0, le=30 * 86400.0)
    target_concurrency: int = Field(default=8, ge=1, le=4096)
    created_at: float = 0.0
    task: Task = "generate"
    base: str = Field(default="", max_length=128)  # an adapter's base deployment ("": a model)
    # Set by the scheduler, never by a client: "preparing" while the deploy-time copy is made,
    # "ready" once the model can start, "failed" (with ``error``) when it never will.
    status: DeploymentStatus = "ready"
    error: str = Field(default="", max_length=2048)


class DeployRequest(Message):
    """Deploy ``spec``. "create" refuses a name that exists (`ConflictError`); "upsert"
    replaces it (`sllm up`). ``check``: have a storage service check the checkpoint first
    (scheme, existence, a model transformers can build, a tokenizer that encodes)."""

    spec: DeploymentSpec
    mode: DeployMode = "upsert"
    check: bool = True


class PatchDeploymentRequest(Message):
    """Change some of a deployment's autoscaling knobs (None: unchanged)."""

    name: str = Field(min_length=1, max_length=128)
    min_instances: int | None = Field(default=None, ge=0, le=1024)
    max_instances: int | None = Field(default=None, ge=1, le=1024)
    keep_alive_s: float | None = Field(default=None, ge=0.0, le=30 * 86400.0)
    target_concurrency: int | None = Field(default=None, ge=1, le=4096)


class DeployReply(Message):
    spec: DeploymentSpec
    created: bool  # False: an existing deployment was updated


class UndeployRequest(Message):
    name: str = Field(min_length=1, max_length=128)


class UndeployReply(Message):
    name: str
    stopped_instances: list[str]


class PlaceRequest(Message):
    """Ask the scheduler for an instance of ``model``: a ready or loading one, or a new one."""

    model: str = Field(min_length=1, max_length=128)
    request_id: str = ""


class PlaceReply(Message):
    instance_id: str
    worker_id: str
    node_id: str
    status: InstanceStatus
    source_tier: Tier
    estimated_startup_s: float = Field(ge=0)


class EstimateRequest(Message):
    """How would a request for ``model`` be served now? (Nothing is placed.)"""

    model: str = Field(min_length=1, max_length=128)


class EstimateReply(Message):
    model: str
    ready: int = Field(ge=0)  # instances serving now
    loading: int = Field(ge=0)  # instances loading now
    # The best free worker's cold start, by the calibrated estimate (None: no free worker).
    node_id: str = ""
    source_tier: Tier | None = None
    estimated_startup_s: float | None = Field(default=None, ge=0)


class ModelDemand(Message):
    """One router's demand for one model: requests it holds (in flight or waiting for an
    instance), how many of them wait for an instance, and how long the oldest has waited."""

    requests: int = Field(ge=0)
    queued: int = Field(default=0, ge=0)
    oldest_wait_s: float = Field(default=0.0, ge=0)


class DemandReport(Message):
    """A router's whole demand, published when it changes (coalesced) and periodically; the
    scheduler forgets it ``ttl_s`` after receipt unless a newer report replaces it."""

    router_id: str = Field(min_length=1, max_length=256)
    models: dict[str, ModelDemand] = Field(default_factory=dict)
    ttl_s: float = Field(gt=0, le=86400.0)
