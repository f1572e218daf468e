"""Every request, reply and chunk schema exchanged between sllm services.

Naming: ``*Request`` goes to a service, ``*Reply`` comes back, ``*Chunk`` is one frame of a
streamed reply. Events live in `events`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .schema import Message

Tier = Literal["gpu", "dram", "ssd", "registry"]
FinishReason = Literal["stop", "length", "cancelled", "error"]
InstanceStatus = Literal["loading", "ready", "stopping", "failed"]

# Upper bounds that keep a malformed or hostile message from asking for absurd work.
MAX_TOKENS_LIMIT = 1 << 20
MAX_PROMPT_TOKENS = 1 << 20


class ServiceInfoReply(Message):
    """What any sllm service says about itself (answer to ``info``)."""

    kind: Literal["router", "scheduler", "worker", "storage"]
    instance_id: str
    node_id: str = ""
    version: str
    started_at: float


class InfoRequest(Message):
    """Ask a service to describe itself."""


# --- scheduler ------------------------------------------------------------------------------


class DeploymentSpec(Message):
    """A model the cluster serves, with its autoscaling knobs (stored in Redis as-is)."""

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/\-]*$")
    checkpoint_uri: str = Field(min_length=1, max_length=4096)
    min_instances: int = Field(default=0, ge=0, le=1024)
    max_instances: int = Field(default=1, ge=1, le=1024)
    keep_alive_s: float = Field(default=300.0, ge=0.0, le=30 * 86400.0)
    target_concurrency: int = Field(default=8, ge=1, le=4096)
    created_at: float = 0.0


class DeployRequest(Message):
    spec: DeploymentSpec


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


# --- worker ---------------------------------------------------------------------------------


class LoadRequest(Message):
    """Load ``model`` from ``checkpoint_uri`` as instance ``instance_id`` on this worker.

    The worker acknowledges at once and loads in the background; the instance record in Redis
    and the ``instance.*`` events say when it is ready or why it failed.
    """

    instance_id: str = Field(min_length=1, max_length=128)
    model: str = Field(min_length=1, max_length=128)
    checkpoint_uri: str = Field(min_length=1, max_length=4096)


class LoadReply(Message):
    instance_id: str
    worker_id: str


class UnloadRequest(Message):
    """Unload an instance. With ``only_if_idle`` the worker decides, race-free, whether the
    instance may go: it refuses (``unloaded=False``) while requests are in flight, and, unless
    ``ignore_keep_alive`` (preemption), while the keep-alive of a finished request lasts.
    ``reason`` goes into the ``instance.stopped`` event."""

    instance_id: str = Field(min_length=1, max_length=128)
    only_if_idle: bool = False
    ignore_keep_alive: bool = False
    reason: str = Field(default="", max_length=256)


class UnloadReply(Message):
    instance_id: str
    freed: bool
    unloaded: bool = True  # False: a conditional unload was refused
    in_flight: int = Field(default=0, ge=0)
    # When a refused unload may be asked again (the keep-alive ends); None: no known time
    # (requests in flight, kept indefinitely, or still loading).
    retry_after_s: float | None = Field(default=None, ge=0)
    requests: int = Field(default=0, ge=0)  # requests this instance has taken so far


class TokenBias(Message):
    """One entry of OpenAI's ``logit_bias``: added to the token's logit before sampling."""

    token_id: int = Field(ge=0)
    bias: float = Field(ge=-100.0, le=100.0)


class GrammarSpec(Message):
    """Constrained decoding: the output must be a JSON value (``json_object``: an object) or
    match the JSON schema ``json_schema`` (serialized) (OpenAI's ``response_format``, tool arguments)."""

    kind: Literal["json_object", "json_schema"]
    json_schema: str = Field(default="", max_length=1 << 20)


class SamplingParams(Message):
    """How one request picks its tokens; every field is applied per sequence, so a request's
    output never depends on what else shares its batch. Defaults change nothing."""

    max_tokens: int = Field(default=16, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float = Field(default=1.0, ge=0.0, le=100.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0, le=1 << 20)  # 0: off
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)  # 0: off
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=10.0)  # 1: off
    logit_bias: list[TokenBias] = Field(default_factory=list, max_length=300)
    seed: int | None = Field(default=None, ge=0, lt=1 << 63)
    stop: list[str] = Field(default_factory=list, max_length=16)
    stop_token_ids: list[int] = Field(default_factory=list, max_length=64)
    min_tokens: int = Field(default=0, ge=0, le=MAX_TOKENS_LIMIT)  # eos and stops wait this long
    ignore_eos: bool = False
    logprobs: bool = False  # report each chosen token's log-probability
    top_logprobs: int = Field(default=0, ge=0, le=20)  # and this many most likely alternatives
    grammar: GrammarSpec | None = None  # the output is constrained to it


class ToolCall(Message):
    """A function call an assistant message made (chat history): ``arguments`` is the JSON text
    the model wrote, as OpenAI carries it."""

    id: str = Field(max_length=1024)
    name: str = Field(min_length=1, max_length=256)
    arguments: str = Field(max_length=8 * 1024 * 1024)


class ChatMessage(Message):
    """One message of a chat. An assistant message may carry ``tool_calls`` (its content may
    then be empty); a ``tool`` message is the result of the call ``tool_call_id``, of the
    function ``name`` when known."""

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str = Field(max_length=8 * 1024 * 1024)
    tool_calls: list[ToolCall] = Field(default_factory=list, max_length=1024)
    tool_call_id: str = Field(default="", max_length=1024)
    name: str = Field(default="", max_length=256)

    @model_validator(mode="after")
    def _tool_fields_by_role(self) -> ChatMessage:
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if (self.tool_call_id or self.name) and self.role != "tool":
            raise ValueError("only tool messages carry tool_call_id and name")
        return self


class GenerateRequest(Message):
    """Generate for one request; chunks go to ``inbox`` numbered from ``start_seq``.

    The prompt is exactly one of ``prompt`` (text), ``messages`` (chat, rendered with the
    model's chat template) or ``prompt_token_ids``. ``tools_json`` (with ``messages`` only) is
    the tools the chat template renders into the prompt, a JSON list as templates take them
    (``[{"type": "function", "function": {"name", "description", "parameters"}}]``); empty:
    none (the router leaves them out when the model may not call them). ``generated_token_ids`` are tokens already
    produced elsewhere (failover, migration): the worker recomputes their KV cache and carries
    on from there. ``inbox`` and ``start_seq`` are filled in by the bus for a fresh stream; a
    migration or a failover passes them on so that the new producer continues the same stream.
    """

    request_id: str = Field(min_length=1, max_length=128)
    model: str = Field(min_length=1, max_length=128)
    prompt: str | None = Field(default=None, max_length=8 * 1024 * 1024)
    messages: list[ChatMessage] | None = Field(default=None, min_length=1, max_length=4096)
    prompt_token_ids: list[int] | None = Field(
        default=None, min_length=1, max_length=MAX_PROMPT_TOKENS
    )
    tools_json: str = Field(default="", max_length=8 * 1024 * 1024)
    generated_token_ids: list[int] = Field(default_factory=list, max_length=MAX_TOKENS_LIMIT)
    params: SamplingParams = Field(default_factory=SamplingParams)
    inbox: str = ""
    start_seq: int = Field(default=0, ge=0)
    # Seconds the instance should stay loaded after this request (Ollama's ``keep_alive``):
    # 0 = it may unload right away, negative = indefinitely, None = the worker's default.
    keep_alive_s: float | None = Field(default=None, le=30 * 86400.0)

    @model_validator(mode="after")
    def _one_prompt(self) -> GenerateRequest:
        given = [x is not None for x in (self.prompt, self.messages, self.prompt_token_ids)]
        if sum(given) != 1:
            raise ValueError("exactly one of prompt, messages, prompt_token_ids is required")
        if self.tools_json and self.messages is None:
            raise ValueError("tools_json goes with messages (a chat) only")
        return self


class GenerateReply(Message):
    """The acknowledgement of a `GenerateRequest`: the worker took the request."""

    request_id: str
    worker_id: str
    instance_id: str
    prompt_token_ids: list[int]


class Usage(Message):
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)


class TopLogprob(Message):
    token_id: int
    token: str  # the token's own text (decoded alone)
    logprob: float


class TokenLogprob(Message):
    """One generated token's log-probability (of the distribution the request sampled from,
    before temperature and filters, as OpenAI reports it) and the most likely alternatives."""

    token_id: int
    token: str
    logprob: float
    top: list[TopLogprob] = Field(default_factory=list)


class TokenChunk(Message):
    """New tokens of a generation; the last chunk has ``finish_reason`` and ``usage``.

    ``logprobs`` (when the request asked for them) has one entry per token of ``token_ids``."""

    token_ids: list[int]
    text: str = ""
    logprobs: list[TokenLogprob] | None = None
    queue_s: float | None = None  # on the first chunk: time the request waited in the worker
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    prefill_s: float | None = None  # on the first chunk: the worker's prefill time
    decode_s: float | None = None  # on the last chunk: time from first to last token


# --- live migration -------------------------------------------------------------------------


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


# --- storage --------------------------------------------------------------------------------


class EnsureRequest(Message):
    """Make ``model``'s checkpoint available in ``tier`` (or a faster one) on this node.

    The reply names the fastest copy there is: asking for "ssd" never promotes, but returns
    the DRAM copy if one exists.
    """

    model: str = Field(min_length=1, max_length=128)
    checkpoint_uri: str = Field(min_length=1, max_length=4096)
    tier: Literal["dram", "ssd"] = "ssd"


class EnsureReply(Message):
    model: str
    path: str
    tier: Literal["dram", "ssd"]
    source_tier: Tier  # where the bytes came from: "registry", "ssd" or "dram" (already there)
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
