"""The deployments API's bodies: the request (a `DeploymentSpec` as JSON writes it) and the
answers (a deployment with its instances, the list, the deletion)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from libs.protocol.messages import DeploymentSpec, DeploymentStatus, Task
from libs.protocol.state import InstanceRecord

# DeploymentSpec's integer fields (strict: an int, never a string or a bool).
_INTEGERS = frozenset(n for n, f in DeploymentSpec.model_fields.items() if f.annotation is int)
_SPEC = DeploymentSpec.model_fields


def _integers(data: object) -> object:
    """JSON Schema's ``integer`` allows ``8.0``: such a value becomes the int it is."""
    if not isinstance(data, dict):
        return data
    return {
        k: int(v) if k in _INTEGERS and isinstance(v, float) and v.is_integer() else v
        for k, v in data.items()
    }


def _adapter_uri(data: object) -> object:
    """An adapter's body names ``adapter_uri`` and ``base``; its checkpoint is the adapter's."""
    if not isinstance(data, dict) or ("base" not in data and "adapter_uri" not in data):
        return data
    if "checkpoint_uri" in data:
        raise ValueError("an adapter names adapter_uri and base, not checkpoint_uri")
    if "base" not in data or "adapter_uri" not in data:
        raise ValueError("an adapter names both adapter_uri and base")
    return {**data, "checkpoint_uri": data["adapter_uri"]}


def _document_model_or_adapter(schema: dict[str, Any]) -> None:
    """The document states `_adapter_uri`'s rule: checkpoint_uri, or adapter_uri and base."""
    schema["required"] = [r for r in schema.get("required", []) if r != "checkpoint_uri"]
    schema["oneOf"] = [
        {
            "required": ["checkpoint_uri"],
            "not": {"anyOf": [{"required": ["adapter_uri"]}, {"required": ["base"]}]},
        },
        {"required": ["adapter_uri", "base"], "not": {"required": ["checkpoint_uri"]}},
    ]


class DeploymentIn(BaseModel):
    """The body of ``POST /v1/deployments``: a `DeploymentSpec`'s own fields (not the status
    the cluster sets: a client that sends it is told so), whose integers may also be written
    with a zero fraction (``8.0``), as JSON Schema's ``integer`` allows. ``created_at`` is
    ignored: the scheduler keeps a deployment's first.

    A model names its ``checkpoint_uri`` (and ``task``: "generate", or "embed" for
    ``/v1/embeddings``); a LoRA adapter names its ``adapter_uri`` (a PEFT adapter directory)
    and its ``base`` deployment instead, and serves on the base's instances."""

    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra=_document_model_or_adapter
    )

    name: Annotated[str, _SPEC["name"]]
    checkpoint_uri: Annotated[str, _SPEC["checkpoint_uri"]]
    adapter_uri: str | None = Field(default=None, min_length=1, max_length=4096)
    base: str | None = Field(default=None, min_length=1, max_length=128)
    task: Annotated[Task, _SPEC["task"]]
    min_instances: Annotated[int, _SPEC["min_instances"]]
    max_instances: Annotated[int, _SPEC["max_instances"]]
    keep_alive_s: Annotated[float, _SPEC["keep_alive_s"]]
    target_concurrency: Annotated[int, _SPEC["target_concurrency"]]
    created_at: Annotated[float, _SPEC["created_at"]]

    @model_validator(mode="before")
    @classmethod
    def _json_integers(cls, data: object) -> object:
        return _adapter_uri(_integers(data))

    def spec(self) -> DeploymentSpec:
        fields = self.model_dump(exclude={"adapter_uri", "base"})
        return DeploymentSpec.model_validate({**fields, "base": self.base or ""})


class DeploymentPatchIn(BaseModel):
    """The body of ``PATCH /v1/deployments/{name}``: the autoscaling knobs to change. The
    checkpoint cannot change (that is a new deployment: delete it and deploy again)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    min_instances: int | None = Field(default=None, ge=0, le=1024)
    max_instances: int | None = Field(default=None, ge=1, le=1024)
    keep_alive_s: float | None = Field(default=None, ge=0.0, le=30 * 86400.0)
    target_concurrency: int | None = Field(default=None, ge=1, le=4096)
    checkpoint_uri: str | None = Field(
        default=None,
        description="Refused (422) unless it equals the deployment's: the checkpoint of a "
        "deployment cannot change.",
    )

    @model_validator(mode="before")
    @classmethod
    def _json_integers(cls, data: object) -> object:
        return _integers(data)


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
    adapters: list[str] = Field(
        default_factory=list,
        description="LoRA adapters resident on this instance, least recently used first",
    )

    @classmethod
    def of(cls, rec: InstanceRecord) -> InstanceOut:
        return cls.model_validate(rec.model_dump(exclude={"model", "worker_epoch"}))


class DeploymentOut(_Response):
    object: Literal["deployment"] = "deployment"
    name: str
    checkpoint_uri: str = Field(description="the model's checkpoint, or the adapter's")
    task: Task = "generate"
    base: str | None = Field(default=None, description="a LoRA adapter's base deployment")
    adapter_uri: str | None = None
    min_instances: int
    max_instances: int
    keep_alive_s: float
    target_concurrency: int
    created_at: float
    status: DeploymentStatus = Field(
        description="preparing: its checkpoint is being copied near the workers; ready: it "
        "serves; failed: it never will (see error), and requests for it are refused (424)."
    )
    error: str = ""
    instances: list[InstanceOut] = Field(default_factory=list)


class DeploymentList(_Response):
    object: Literal["list"] = "list"
    data: list[DeploymentOut]


class DeploymentDeleted(_Response):
    object: Literal["deployment.deleted"] = "deployment.deleted"
    name: str
    deleted: bool = True
    stopped_instances: list[str]
