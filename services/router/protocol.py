"""OpenAI-compatible request and response schemas of the REST API.

Requests accept (and ignore) fields that OpenAI clients send and sllm does not use; fields that
would change the answer in a way sllm cannot honour (``n > 1``, ``logprobs``, ``echo``...) are
rejected with a clear 400 rather than silently dropped.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from libs.protocol.messages import MAX_TOKENS_LIMIT, ChatMessage, SamplingParams, Usage
from libs.protocol.state import InstanceRecord

MAX_STOP = 16
MAX_KEEP_ALIVE_S = 30 * 86400.0
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
KEEP_ALIVE_HELP = (
    'keep_alive must be seconds (a number) or a duration such as "30s", "5m" or "1h"; '
    "0 unloads right after the request, a negative value keeps the model loaded indefinitely"
)


def parse_keep_alive(value: object) -> float | None:
    """Ollama's ``keep_alive``: seconds, or a Go-style duration string ("30s", "5m", "1h30m");
    negative means indefinitely (returned as -1). Raises ValueError with a clear message."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(KEEP_ALIVE_HELP)
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        try:
            seconds = sign * float(body)
        except ValueError:
            parts = _DURATION.findall(body)
            if not body or "".join(n + u for n, u in parts) != body:
                raise ValueError(f"{KEEP_ALIVE_HELP}; got {value!r}") from None
            seconds = sign * sum(float(n) * _UNIT_S[u] for n, u in parts)
    else:
        raise ValueError(KEEP_ALIVE_HELP)
    if math.isnan(seconds):
        raise ValueError(KEEP_ALIVE_HELP)
    if seconds < 0:
        return -1.0
    if seconds > MAX_KEEP_ALIVE_S:
        raise ValueError(f"keep_alive must be at most {MAX_KEEP_ALIVE_S:g} seconds (30 days)")
    return seconds


class _Request(BaseModel):
    # Unknown fields are what newer OpenAI clients send: accept them, ignore them.
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Request):
    include_usage: bool = False


class ContentPart(_Request):
    type: str
    text: str | None = None

    @model_validator(mode="after")
    def _text_only(self) -> ContentPart:
        if self.type != "text" or self.text is None:
            raise ValueError(f"only text content parts are supported, got {self.type!r}")
        return self


class ChatMessageIn(_Request):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[ContentPart] | None = None

    def to_bus(self) -> ChatMessage:
        if isinstance(self.content, list):
            text = "".join(part.text or "" for part in self.content)
        else:
            text = self.content or ""
        return ChatMessage(role=self.role, content=text)


def _check_max_tokens(name: str, value: int | None) -> int | None:
    if value is not None and not 1 <= value <= MAX_TOKENS_LIMIT:
        raise ValueError(f"{name} must be between 1 and {MAX_TOKENS_LIMIT}, got {value}")
    return value


class _Sampling(_Request):
    """The sampling fields chat and completions share."""

    model: str = Field(min_length=1, max_length=128)
    max_tokens: int | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, lt=1 << 63)
    stop: str | list[str] | None = None
    n: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    keep_alive: float | None = None  # seconds; see `parse_keep_alive`

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _keep_alive(cls, v: object) -> float | None:
        return parse_keep_alive(v)

    @field_validator("max_tokens")
    @classmethod
    def _max_tokens(cls, v: int | None) -> int | None:
        return _check_max_tokens("max_tokens", v)

    @field_validator("n")
    @classmethod
    def _one_choice(cls, v: int | None) -> int | None:
        if v is not None and v != 1:
            raise ValueError(f"n must be 1 (sllm returns one choice per request), got {v}")
        return v

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences, got {len(v)}")
        return v

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def sampling(self, max_tokens: int) -> SamplingParams:
        temperature = 1.0 if self.temperature is None else self.temperature
        top_p = 1.0 if self.top_p is None else self.top_p
        if top_p == 0.0:
            # Keep only the most likely token: that is greedy decoding.
            temperature, top_p = 0.0, 1.0
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=self.seed,
            stop=[s for s in stops if s],
        )


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=4096)
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None

    @field_validator("max_completion_tokens")
    @classmethod
    def _max_completion_tokens(cls, v: int | None) -> int | None:
        return _check_max_tokens("max_completion_tokens", v)

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, v: bool | None) -> bool | None:
        if v:
            raise ValueError("logprobs are not supported")
        return v

    def params(self, default_max_tokens: int) -> SamplingParams:
        limit = self.max_completion_tokens or self.max_tokens or default_max_tokens
        return self.sampling(limit)


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool | None = None
    best_of: int | None = None
    logprobs: int | None = None
    suffix: str | None = None

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
        return v

    @model_validator(mode="after")
    def _unsupported(self) -> CompletionRequest:
        if self.echo:
            raise ValueError("echo is not supported")
        if self.best_of is not None and self.best_of != 1:
            raise ValueError("best_of must be 1")
        if self.logprobs:
            raise ValueError("logprobs are not supported")
        if self.suffix:
            raise ValueError("suffix is not supported")
        return self

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


# --- responses ------------------------------------------------------------------------------


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UsageOut(_Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, usage: Usage) -> UsageOut:
        return cls(
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.prompt_tokens + usage.completion_tokens,
        )


class AssistantMessage(_Response):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(_Response):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: str | None


class ChatCompletion(_Response):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: UsageOut


class ChatChunkChoice(_Response):
    index: int = 0
    delta: dict[str, Any]
    logprobs: None = None
    finish_reason: str | None = None


class ChatCompletionChunk(_Response):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: UsageOut | None = None


class CompletionChoice(_Response):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: str | None


class Completion(_Response):
    """Both the non-streamed answer and each streamed chunk (OpenAI uses one shape)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: UsageOut | None = None


class ModelCard(_Response):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "sllm"


class ModelList(_Response):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# --- deployments API ------------------------------------------------------------------------


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
