"""Messages to a worker: loading and unloading an instance, and generating (the request, its
sampling, chat messages, the acknowledgement and the token chunks of the stream)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..schema import Message
from .common import MAX_PROMPT_TOKENS, MAX_TOKENS_LIMIT, FinishReason


class LoadRequest(Message):
    """Load ``model`` from ``checkpoint_uri`` as instance ``instance_id`` on this worker.

    The worker acknowledges at once and loads in the background; the instance record in Redis
    and the ``instance.*`` events say when it is ready or why it failed.
    """

    instance_id: str = Field(min_length=1, max_length=128)
    model: str = Field(min_length=1, max_length=128)
    checkpoint_uri: str = Field(min_length=1, max_length=4096)
    task: Literal["generate", "embed"] = "generate"  # the deployment's (`DeploymentSpec.task`)


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
    # A LoRA adapter of ``model`` to generate with (its deployment name and checkpoint): the
    # worker loads it onto the base if it does not hold it yet. "": the base model itself.
    adapter: str = Field(default="", max_length=128)
    adapter_uri: str = Field(default="", max_length=4096)

    @model_validator(mode="after")
    def _one_prompt(self) -> GenerateRequest:
        given = [x is not None for x in (self.prompt, self.messages, self.prompt_token_ids)]
        if sum(given) != 1:
            raise ValueError("exactly one of prompt, messages, prompt_token_ids is required")
        if self.tools_json and self.messages is None:
            raise ValueError("tools_json goes with messages (a chat) only")
        if bool(self.adapter) != bool(self.adapter_uri):
            raise ValueError("adapter and adapter_uri go together")
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


# Inputs of one embedding request to a worker: the router splits bigger requests, so that a
# reply (``MAX_EMBED_INPUTS`` vectors of float32) stays well inside a bus message.
MAX_EMBED_INPUTS = 64
MAX_EMBED_TEXT_CHARS = 1 << 20


class EmbedRequest(Message):
    """Embed each input with ``model`` (deployed with task "embed"): exactly one of ``texts``
    (tokenized by the worker, with the model's special tokens) or ``token_ids``."""

    request_id: str = Field(min_length=1, max_length=128)
    model: str = Field(min_length=1, max_length=128)
    texts: list[str] | None = Field(default=None, min_length=1, max_length=MAX_EMBED_INPUTS)
    token_ids: list[list[int]] | None = Field(
        default=None, min_length=1, max_length=MAX_EMBED_INPUTS
    )
    keep_alive_s: float | None = Field(default=None, le=30 * 86400.0)  # as `GenerateRequest`

    @model_validator(mode="after")
    def _one_input(self) -> EmbedRequest:
        if (self.texts is None) == (self.token_ids is None):
            raise ValueError("exactly one of texts, token_ids is required")
        if self.texts is not None and any(len(t) > MAX_EMBED_TEXT_CHARS for t in self.texts):
            raise ValueError(f"an input text is longer than {MAX_EMBED_TEXT_CHARS} characters")
        if self.token_ids is not None and sum(map(len, self.token_ids)) > MAX_PROMPT_TOKENS:
            raise ValueError(f"the inputs hold more than {MAX_PROMPT_TOKENS} tokens")
        return self


class EmbedReply(Message):
    """One vector per input, in order: ``vectors`` holds them as little-endian float32, each
    ``dimensions`` long; ``tokens``: each input's length in tokens (for ``usage``)."""

    request_id: str
    instance_id: str
    dimensions: int = Field(ge=1)
    vectors: bytes
    tokens: list[int]
