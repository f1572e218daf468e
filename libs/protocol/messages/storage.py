"""Messages to a node's storage service: making a checkpoint available in a tier, evicting it,
and quarantining a damaged copy."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..schema import Message
from .common import Tier


class EnsureRequest(Message):
    """Make ``model``'s checkpoint available in ``tier`` (or a faster one) on this node.

    The reply names the fastest copy there is: asking for "ssd" never promotes, but returns
    the DRAM copy if one exists.
    """

    model: str = Field(min_length=1, max_length=128)
    checkpoint_uri: str = Field(min_length=1, max_length=4096)
    tier: Literal["dram", "ssd"] = "ssd"
    # A worker about to load may be answered with the registry source itself when no tier
    # holds a copy yet and the source is a Hugging Face directory it can load as it is: the
    # copy is then made meanwhile, not waited for (`EnsureReply.hf_source`).
    source_ok: bool = False


class EnsureReply(Message):
    model: str
    path: str
    tier: Literal["dram", "ssd"]
    source_tier: Tier  # where the bytes came from: "registry", "ssd" or "dram" (already there)
    # ``path`` is the registry's Hugging Face directory, not a tier copy (`source_ok`): load
    # its safetensors; ``tier`` then says where the directory lies (a local disk).
    hf_source: bool = False
    bytes: int = Field(ge=0)
    seconds: float = Field(ge=0)


class EvictRequest(Message):
    model: str = Field(min_length=1, max_length=128)
    tier: Literal["dram", "ssd"]


class EvictReply(Message):
    model: str
    evicted: bool


class QuarantineRequest(Message):
    """A reader found a tier copy damaged (a chunk's hash, a file's size): the node's storage
    service checks the claim and takes the copy out of service, so the next ensure serves
    another tier or fetches a fresh copy.

    ``path`` is the copy's directory as an `EnsureReply` named it: a report about a copy that
    has been replaced since changes nothing.
    """

    model: str = Field(min_length=1, max_length=128)
    tier: Literal["dram", "ssd"]
    path: str = Field(min_length=1, max_length=4096)
    file: str = Field(default="", max_length=4096)  # the damaged file, by name in the copy
    offset: int | None = Field(default=None, ge=0)  # where in it (a chunk's start)
    reason: str = Field(default="", max_length=1024)
    reporter: str = Field(default="", max_length=256)  # who found it (a worker id)


class QuarantineReply(Message):
    model: str
    tier: Literal["dram", "ssd"]
    quarantined: bool  # False: not this node's current copy, or the copy checked intact
    detail: str = ""


class InspectRequest(Message):
    """Check that ``checkpoint_uri`` can be served, without copying its weights: the scheme is
    allowed, the source exists and is readable, and it is an sllm checkpoint or a Hugging Face
    model directory whose architecture transformers can build and whose tokenizer encodes."""

    checkpoint_uri: str = Field(min_length=1, max_length=4096)
    # Set for a LoRA adapter: ``checkpoint_uri`` is a PEFT adapter directory, checked against
    # this base checkpoint's modules and shapes where the node can read them.
    base_uri: str = Field(default="", max_length=4096)
    task: Literal["generate", "embed"] = "generate"  # "embed": its pooling is checked too


class InspectReply(Message):
    kind: str  # "sllm-file", "hf-file", "sllm-http", "hf-hub"
    bytes: int = Field(ge=0)  # the weights' size, as far as known without a fetch
    architecture: str = ""  # config.json's architectures[0] (or its model_type)
    # What could not be checked without fetching (an HTTP checkpoint's tokenizer): the
    # deployment's preparation checks it.
    deferred: list[str] = Field(default_factory=list)
