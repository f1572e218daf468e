"""The deployments API's bodies: the request (a `DeploymentSpec` as JSON writes it) and the
answers (a deployment with its instances, the list, the deletion)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from libs.protocol.messages import DeploymentSpec
from libs.protocol.state import InstanceRecord

# DeploymentSpec's integer fields (strict: an int, never a string or a bool).
_INTEGERS = frozenset(n for n, f in DeploymentSpec.model_fields.items() if f.annotation is int)


class DeploymentIn(DeploymentSpec):
    """The body of ``POST /v1/deployments``: a `DeploymentSpec` whose integers may also be
    written with a zero fraction (``8.0``), as JSON Schema's ``integer`` allows. ``created_at``
    is ignored: the scheduler keeps a deployment's first."""

    @model_validator(mode="before")
    @classmethod
    def _json_integers(cls, data: object) -> object:
        if not isinstance(data, dict):
            return data
        return {
            k: int(v) if k in _INTEGERS and isinstance(v, float) and v.is_integer() else v
            for k, v in data.items()
        }

    def spec(self) -> DeploymentSpec:
        return DeploymentSpec.model_validate(self.model_dump())


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InstanceOut(_Response):
    instance_id: str
    status: str
    worker_id: str
    node_id: str
    created_at: float
    ready_at: float | None = None
    source_tier: str | None = None
    load_s: float | None = None
    error: str = ""

    @classmethod
    def of(cls, rec: InstanceRecord) -> InstanceOut:
        return cls.model_validate(rec.model_dump(exclude={"model", "worker_epoch"}))


class DeploymentOut(_Response):
    object: Literal["deployment"] = "deployment"
    name: str
    checkpoint_uri: str
    min_instances: int
    max_instances: int
    keep_alive_s: float
    target_concurrency: int
    created_at: float
    instances: list[InstanceOut] = Field(default_factory=list)


class DeploymentList(_Response):
    object: Literal["list"] = "list"
    data: list[DeploymentOut]


class DeploymentDeleted(_Response):
    object: Literal["deployment.deleted"] = "deployment.deleted"
    name: str
    deleted: bool = True
    stopped_instances: list[str]
