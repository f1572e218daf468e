"""Live migration's messages: the scheduler's and the source worker's requests to move running
generations, the destination's adoption of each (prefill, catch-up deltas, commit or abort), and
what a worker is generating now."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..schema import Message
from .common import MAX_TOKENS_LIMIT
from .worker import GenerateRequest


class MigrateRequest(Message):
    """To the source worker: move running generations of ``instance_id`` to the instance
    ``destination_instance_id`` (ready) on worker ``destination_worker_id``.

    Empty ``request_ids``: every running generation. Per generation the source sends the tokens
    so far, then deltas in rounds while it keeps decoding, until the destination is at most
    ``target_gap`` tokens behind or ``max_rounds`` deltas were sent; then it stops at a token
    boundary and the destination continues the same stream. ``timeout_s`` bounds one
    generation's migration (None: the worker's ``SLLM_MIGRATION_TIMEOUT``); past it, or on any
    failure of the destination, the source carries on as if nothing had happened.
    """

    instance_id: str = Field(min_length=1, max_length=128)
    destination_worker_id: str = Field(min_length=1, max_length=128)
    destination_instance_id: str = Field(min_length=1, max_length=128)
    request_ids: list[str] = Field(default_factory=list, max_length=4096)
    max_rounds: int = Field(default=4, ge=0, le=64)
    target_gap: int = Field(default=2, ge=0, le=MAX_TOKENS_LIMIT)
    timeout_s: float | None = Field(default=None, gt=0, le=3600.0)


MigrationOutcome = Literal["committed", "aborted", "finished", "not_found"]


class MigratedGeneration(Message):
    """What happened to one generation: moved (``committed``), stayed on the source
    (``aborted``, with ``error``), ended before it could move (``finished``), or unknown."""

    request_id: str
    outcome: MigrationOutcome
    migration_id: str = ""
    rounds: int = Field(default=0, ge=0)
    tokens: int = Field(default=0, ge=0)  # prompt + generated tokens the destination recomputed
    seconds: float = Field(default=0.0, ge=0)
    error: str = ""


class MigrateReply(Message):
    instance_id: str
    generations: list[MigratedGeneration]
    remaining: int = Field(ge=0)  # generations still running on the source afterwards


class RunningRequest(Message):
    """Ask a worker what it is generating now (the scheduler's migration policy needs it)."""


class RunningGeneration(Message):
    """One generation a worker produces, with the speeds it measured while doing so."""

    request_id: str
    context_tokens: int = Field(ge=0)  # prompt + tokens generated so far
    remaining_tokens: int = Field(ge=0)  # at most this many more (max_tokens - generated)
    prefill_tokens: int = Field(default=0, ge=0)  # tokens its prefill here covered
    prefill_s: float | None = Field(default=None, ge=0)  # what that prefill took
    decode_s_per_token: float | None = Field(default=None, ge=0)  # its pace so far


class RunningReply(Message):
    worker_id: str
    instance_id: str = ""  # "" when the worker hosts nothing
    model: str = ""
    status: str = ""  # the instance's status on the worker (loading, ready, stopping)
    generations: list[RunningGeneration] = Field(default_factory=list)


class AdoptRequest(Message):
    """To the destination worker: prefill a shadow of ``request`` (its ``generated_token_ids``
    are the tokens so far, ``params.seed`` the seed the source actually uses) without
    producing anything; the reply comes once the shadow's KV cache holds them."""

    migration_id: str = Field(min_length=1, max_length=128)
    instance_id: str = Field(min_length=1, max_length=128)  # the destination instance
    source_worker_id: str = Field(min_length=1, max_length=128)
    source_instance_id: str = Field(min_length=1, max_length=128)
    request: GenerateRequest


class AdoptReply(Message):
    migration_id: str
    tokens: int = Field(ge=0)  # tokens the shadow's KV cache holds (prompt + generated)
    prefill_s: float = Field(ge=0)


class AdoptDeltaRequest(Message):
    """One catch-up round: the tokens the source produced since the last message;
    ``total`` is the number of generated tokens the shadow holds after it (a check)."""

    migration_id: str = Field(min_length=1, max_length=128)
    token_ids: list[int] = Field(max_length=MAX_TOKENS_LIMIT)
    total: int = Field(ge=0)


class AdoptCommitRequest(Message):
    """The source has stopped: the final delta, then the destination produces the rest of the
    stream, numbered from ``start_seq``. ``paused_at`` (wall time of the source's last
    published frame) lets the destination measure the pause it put into the stream."""

    migration_id: str = Field(min_length=1, max_length=128)
    token_ids: list[int] = Field(max_length=MAX_TOKENS_LIMIT)
    total: int = Field(ge=0)
    start_seq: int = Field(ge=0)
    paused_at: float = 0.0


class AdoptAbortRequest(Message):
    migration_id: str = Field(min_length=1, max_length=128)
    reason: str = Field(default="", max_length=512)


class AdoptAbortReply(Message):
    migration_id: str
    aborted: bool  # False: no such migration (already dropped, or never arrived)


class MigrateInstanceRequest(Message):
    """To the scheduler: move the running generations of ``instance_id`` to another worker
    (``destination_worker_id``, else the best free worker by estimated startup), loading the
    model there first if needed; with ``free_source``, stop the source instance once every
    generation left it, freeing its worker."""

    instance_id: str = Field(min_length=1, max_length=128)
    destination_worker_id: str = Field(default="", max_length=128)
    request_ids: list[str] = Field(default_factory=list, max_length=4096)
    free_source: bool = False
    max_rounds: int = Field(default=4, ge=0, le=64)
    target_gap: int = Field(default=2, ge=0, le=MAX_TOKENS_LIMIT)
    timeout_s: float | None = Field(default=None, gt=0, le=3600.0)


class MigrateInstanceReply(Message):
    instance_id: str
    destination_instance_id: str
    destination_worker_id: str
    generations: list[MigratedGeneration]
    remaining: int = Field(ge=0)
    source_freed: bool = False
    load_s: float = Field(default=0.0, ge=0)  # time to get the destination instance ready
