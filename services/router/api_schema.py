"""The REST API's schemas: OpenAI's completion requests and the model list (a chat's messages
are in `chat_messages`, its tools in `tool_calls`, the completions' answers in `responses`, the
deployments API's bodies in `deployment_schema`, the error answers in `openapi_doc`).

A rule that a validator enforces with its own message is stated in the JSON schema all the same
(`documented`), so that /openapi.json says what the router accepts.

A request model declares the fields sllm honours and maps them to `SamplingParams`; which other
fields are accepted and ignored (they cannot change the answer) or refused with a 400 naming
them (everything else, unknown fields included) is `openai_fields`' decision.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from libs.protocol.messages import (
    MAX_PROMPT_TOKENS,
    MAX_TOKENS_LIMIT,
    ChatMessage,
    GrammarSpec,
    SamplingParams,
    TokenBias,
)

from .chat_messages import ChatMessageIn
from .errors import ApiError
from .keep_alive import MAX_KEEP_ALIVE_S, parse_keep_alive
from .openai_fields import (
    CHAT_REFUSED,
    COMPLETION_REFUSED,
    REQUEST_IGNORED,
    STREAM_OPTIONS_IGNORED,
    RequestPart,
    refuse,
)
from .tool_calls import (
    MAX_TOOLS,
    NO_TOOLS,
    ToolChoice,
    ToolIn,
    ToolPlan,
    ToolPlanError,
    tool_choice_model,
    tool_plan,
)

MAX_STOP = 16
MAX_CHOICES = 16
MAX_STOP_TOKEN_IDS = 64  # as SamplingParams allows
MAX_LOGIT_BIAS = 300  # biased tokens per request, as SamplingParams allows
MAX_TOKEN_ID = 1 << 31


class StreamOptions(RequestPart):
    IGNORED = STREAM_OPTIONS_IGNORED

    include_usage: bool = False
    # sllm's own: cold-start progress as SSE comments while the answer waits (`progress`).
    include_progress: bool = False


def _check_max_tokens(name: str, value: int | None) -> int | None:
    if value is not None and not 1 <= value <= MAX_TOKENS_LIMIT:
        raise ValueError(f"{name} must be between 1 and {MAX_TOKENS_LIMIT}, got {value}")
    return value


TokenId = Annotated[int, Field(ge=0, lt=MAX_TOKEN_ID)]
Bias = Annotated[float, Field(ge=-100.0, le=100.0)]
# A logit_bias key: a token id as a string, below 10**9 (no vocabulary comes near).
BIASED_TOKEN = r"^[0-9]{1,9}$"


def documented(**keywords: Any) -> Any:
    """A field's JSON schema keywords for a rule that a validator enforces, with its own
    message: /openapi.json states it all the same."""
    return Field(json_schema_extra=keywords)


# Seconds (negative: indefinitely) or a duration such as "5m" (`parse_keep_alive`).
_NUMBER, _UNIT = r"([0-9]+(\.[0-9]*)?|\.[0-9]+)", "(ns|us|µs|ms|s|m|h)"
KEEP_ALIVE_FORMS = [
    {"type": "number", "maximum": MAX_KEEP_ALIVE_S},
    {"type": "string", "pattern": rf"^[+-]?({_NUMBER}([eE][+-]?[0-9]+)?|({_NUMBER}{_UNIT})+)$"},
    {"type": "null"},
]
MaxTokens = Annotated[int | None, documented(minimum=1, maximum=MAX_TOKENS_LIMIT)]
# One prompt: text, token ids, or a list of one of either (`CompletionRequest._one_prompt`).
Ids = Annotated[
    list[Annotated[int, documented(minimum=0, maximum=MAX_TOKEN_ID - 1)]],
    documented(maxItems=MAX_PROMPT_TOKENS),
]
Prompt = Annotated[
    str
    | Annotated[list[str], documented(maxItems=1)]
    | Ids
    | Annotated[list[Annotated[Ids, documented(minItems=1)]], documented(maxItems=1)],
    documented(minItems=1),
]


class _Sampling(RequestPart):
    """The fields chat and completions share: what they honour, and how it maps to
    `SamplingParams` (OpenAI's fields, and vLLM's extensions top_k, min_p...)."""

    IGNORED = REQUEST_IGNORED

    model: str = Field(min_length=1, max_length=128)
    max_tokens: MaxTokens = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1, le=1 << 20)  # vLLM: -1 or 0 is off
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=10.0)
    # token id (a string, as in JSON) -> bias
    logit_bias: Annotated[
        dict[str, Bias] | None,
        documented(maxProperties=MAX_LOGIT_BIAS, propertyNames={"pattern": BIASED_TOKEN}),
    ] = None
    seed: int | None = Field(default=None, ge=0, lt=1 << 63)
    # Choices: n samples of the prompt, the i-th with seed + i (its prefill is shared).
    n: int | None = Field(default=None, ge=1, le=MAX_CHOICES)
    stop: Annotated[str | list[str] | None, documented(maxItems=MAX_STOP)] = None
    stop_token_ids: list[TokenId] | None = Field(default=None, max_length=MAX_STOP_TOKEN_IDS)
    min_tokens: int | None = Field(default=None, ge=0, le=MAX_TOKENS_LIMIT)
    ignore_eos: bool | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    keep_alive: Annotated[float | None, documented(anyOf=KEEP_ALIVE_FORMS)] = None

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _keep_alive(cls, v: object) -> float | None:
        return parse_keep_alive(v)

    @field_validator("max_tokens")
    @classmethod
    def _max_tokens(cls, v: int | None) -> int | None:
        return _check_max_tokens("max_tokens", v)

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences, got {len(v)}")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is None:
            return v
        if len(v) > MAX_LOGIT_BIAS:
            raise ValueError(f"at most {MAX_LOGIT_BIAS} tokens may be biased, got {len(v)}")
        for key in v:
            if not re.fullmatch(BIASED_TOKEN, key):
                raise ValueError(
                    f'keys must be token ids (as strings, such as "50256"), got {key!r}'
                )
        return v

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    @property
    def include_progress(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_progress)

    def _logprobs(self) -> tuple[bool, int]:
        """Whether the answer reports logprobs, and how many alternatives per token."""
        return False, 0

    def sampling(self, max_tokens: int) -> SamplingParams:
        if self.min_tokens is not None and self.min_tokens > max_tokens:
            raise ApiError(
                400,
                f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({max_tokens})",
                code="invalid_request",
                param="min_tokens",
            )
        temperature = 1.0 if self.temperature is None else self.temperature
        top_p = 1.0 if self.top_p is None else self.top_p
        if top_p == 0.0:
            # Keep only the most likely token: that is greedy decoding.
            temperature, top_p = 0.0, 1.0
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        logprobs, top_logprobs = self._logprobs()
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=max(self.top_k or 0, 0),
            min_p=self.min_p or 0.0,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            repetition_penalty=1.0 if self.repetition_penalty is None else self.repetition_penalty,
            logit_bias=[
                TokenBias(token_id=int(k), bias=b) for k, b in (self.logit_bias or {}).items()
            ],
            seed=self.seed,
            stop=[s for s in stops if s],
            stop_token_ids=list(self.stop_token_ids or []),
            min_tokens=self.min_tokens or 0,
            ignore_eos=bool(self.ignore_eos),
            logprobs=logprobs,
            top_logprobs=top_logprobs,
        )


class JsonSchemaFormat(RequestPart):
    """OpenAI's ``response_format.json_schema``: the schema is always enforced (``strict``
    or not), by constrained decoding."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(RequestPart):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError('"json_schema" goes with (and only with) type "json_schema"')
        return self

    def grammar(self) -> GrammarSpec | None:
        if self.type == "json_object":
            return GrammarSpec(kind="json_object")
        if self.json_schema is not None:
            schema = self.json_schema.schema_ or {"type": "object"}
            return GrammarSpec(kind="json_schema", json_schema=json.dumps(schema))
        return None


class ChatCompletionRequest(_Sampling):
    REFUSED = CHAT_REFUSED

    messages: list[ChatMessageIn] = Field(min_length=1, max_length=4096)
    max_completion_tokens: MaxTokens = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[ToolIn] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    _tools: ToolPlan = PrivateAttr(default=NO_TOOLS)

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _tool_choice(cls, v: object) -> object:
        return tool_choice_model(v)

    @model_validator(mode="after")
    def _tool_plan(self) -> ChatCompletionRequest:
        if self.tools is None and self.tool_choice in (None, "none", "auto"):
            return self  # the common case
        try:
            self._tools = tool_plan(self.tools, self.tool_choice, self.parallel_tool_calls)
        except ToolPlanError as exc:
            refuse(type(self), exc.param, None, str(exc))
        fmt = self.response_format.type if self.response_format else "text"
        if self._tools.mode == "auto" and fmt != "text":
            refuse(
                type(self),
                "response_format",
                fmt,
                f'{fmt} with tools needs tool_choice "none", "required" or a named function: '
                "sllm cannot constrain the content and leave the model free to call a tool",
            )
        return self

    @property
    def tool_plan(self) -> ToolPlan:
        """What the tool fields make of the generation (`ToolPlan`)."""
        return self._tools

    def bus_messages(self) -> list[ChatMessage]:
        """The messages on the bus; a tool result names the function of the call it answers."""
        names = {c.id: c.function.name for m in self.messages for c in m.tool_calls or ()}
        return [m.to_bus(names.get(m.tool_call_id or "", "")) for m in self.messages]

    @field_validator("max_completion_tokens")
    @classmethod
    def _max_completion_tokens(cls, v: int | None) -> int | None:
        return _check_max_tokens("max_completion_tokens", v)

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs: true")
        return v

    def _logprobs(self) -> tuple[bool, int]:
        return bool(self.logprobs), self.top_logprobs or 0

    def params(self, default_max_tokens: int) -> SamplingParams:
        limit = self.max_completion_tokens or self.max_tokens or default_max_tokens
        params = self.sampling(limit)
        grammar = self._tools.grammar  # a tool call is the answer: response_format has no part
        if grammar is None and self.response_format:
            grammar = self.response_format.grammar()
        return params.model_copy(update={"grammar": grammar}) if grammar else params


class CompletionRequest(_Sampling):
    REFUSED = COMPLETION_REFUSED

    prompt: Prompt
    # OpenAI's legacy logprobs: the chosen token's and this many alternatives (0..5).
    logprobs: int | None = Field(default=None, ge=0, le=5)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(
        cls, v: str | list[str] | list[int] | list[list[int]]
    ) -> str | list[str] | list[int] | list[list[int]]:
        if isinstance(v, list):
            if not v:
                raise ValueError("prompt must not be empty")
            if isinstance(v[0], str | list) and len(v) != 1:
                raise ValueError(f"one prompt per request is supported, got {len(v)}")
            ids = v[0] if isinstance(v[0], list) else v
            if not ids:
                raise ValueError("prompt must not be empty")
            if any(isinstance(t, int) and t < 0 for t in ids):
                raise ValueError("token ids must not be negative")
            if any(isinstance(t, int) and t >= MAX_TOKEN_ID for t in ids):
                raise ValueError(f"token ids must be below {MAX_TOKEN_ID}")
        return v

    def _logprobs(self) -> tuple[bool, int]:
        return self.logprobs is not None, self.logprobs or 0

    def text_or_ids(self) -> str | list[int]:
        """The single prompt, as text or as token ids."""
        p = self.prompt
        if isinstance(p, str):
            return p
        first = p[0]
        if isinstance(first, str):
            return first
        if isinstance(first, list):
            return list(first)
        return [int(t) for t in p if isinstance(t, int)]

    def params(self) -> SamplingParams:
        return self.sampling(self.max_tokens or 16)


# --- the model list ------------------------------------------------------------------------


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelCard(_Response):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "sllm"
    parent: str | None = None  # a LoRA adapter's base model (as vLLM lists adapters)


class ModelList(_Response):
    object: Literal["list"] = "list"
    data: list[ModelCard]
