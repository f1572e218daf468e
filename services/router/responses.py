"""OpenAI's answer shapes for chat and text completions, whole and streamed (as SSE events),
with the logprobs of their tokens when asked for."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from libs.protocol.messages import SamplingParams, TokenChunk, TokenLogprob, Usage

from .logprobs import ChatLogprobs, CompletionLogprobs, chat_logprobs, completion_logprobs
from .sse import event


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
    logprobs: ChatLogprobs | None = None
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
    logprobs: ChatLogprobs | None = None
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
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None


class Completion(_Response):
    """Both the non-streamed answer and each streamed chunk (OpenAI uses one shape)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: UsageOut | None = None


class AnswerFormat:
    """How one kind of answer looks: its chunks, its final chunk, and its whole form."""

    def __init__(
        self, request_id: str, model: str, include_usage: bool, params: SamplingParams
    ) -> None:
        self.id = request_id
        self.model = model
        self.created = int(time.time())
        self.include_usage = include_usage
        # With include_usage, OpenAI sends "usage": null on every chunk but the last.
        self.exclude: set[str] | None = None if include_usage else {"usage"}
        self.logprobs = params.logprobs
        self.top = params.top_logprobs

    def opening(self) -> list[bytes]:
        return []

    def tokens(self, chunk: TokenChunk) -> bytes | None:
        """The event for a worker's chunk, or None when it has nothing to show. Tokens whose
        text is held back (a possible stop string, part of a character) still show their
        logprobs."""
        if chunk.text or (self.logprobs and chunk.logprobs):
            return self.text(chunk.text, chunk.logprobs or ())
        return None

    def text(self, text: str, logprobs: Sequence[TokenLogprob]) -> bytes:
        """A chunk of text and the logprobs of its tokens (when asked for)."""
        raise NotImplementedError

    def finish(self, reason: str) -> bytes:
        raise NotImplementedError

    def usage(self, usage: Usage) -> bytes:
        raise NotImplementedError

    def whole(
        self, text: str, logprobs: Sequence[TokenLogprob], reason: str, usage: Usage
    ) -> dict[str, Any]:
        raise NotImplementedError


class ChatFormat(AnswerFormat):
    def _chunk(self, choices: list[ChatChunkChoice], usage: UsageOut | None = None) -> bytes:
        chunk = ChatCompletionChunk(
            id=self.id, created=self.created, model=self.model, choices=choices, usage=usage
        )
        return event(chunk, exclude=self.exclude)

    def _logprobs(self, entries: Sequence[TokenLogprob]) -> ChatLogprobs | None:
        return chat_logprobs(entries, self.top) if self.logprobs else None

    def opening(self) -> list[bytes]:
        return [self._chunk([ChatChunkChoice(delta={"role": "assistant", "content": ""})])]

    def text(self, text: str, logprobs: Sequence[TokenLogprob]) -> bytes:
        choice = ChatChunkChoice(delta={"content": text}, logprobs=self._logprobs(logprobs))
        return self._chunk([choice])

    def finish(self, reason: str) -> bytes:
        return self._chunk([ChatChunkChoice(delta={}, finish_reason=reason)])

    def usage(self, usage: Usage) -> bytes:
        return self._chunk([], UsageOut.of(usage))

    def whole(
        self, text: str, logprobs: Sequence[TokenLogprob], reason: str, usage: Usage
    ) -> dict[str, Any]:
        choice = ChatChoice(
            message=AssistantMessage(content=text),
            logprobs=self._logprobs(logprobs),
            finish_reason=reason,
        )
        return ChatCompletion(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[choice],
            usage=UsageOut.of(usage),
        ).model_dump()


class CompletionFormat(AnswerFormat):
    offset = 0  # where the next streamed token's text starts in the completion

    def _chunk(self, choices: list[CompletionChoice], usage: UsageOut | None = None) -> bytes:
        chunk = Completion(
            id=self.id, created=self.created, model=self.model, choices=choices, usage=usage
        )
        return event(chunk, exclude=self.exclude)

    def text(self, text: str, logprobs: Sequence[TokenLogprob]) -> bytes:
        out = None
        if self.logprobs:
            out, self.offset = completion_logprobs(logprobs, self.top, self.offset)
        return self._chunk([CompletionChoice(text=text, logprobs=out, finish_reason=None)])

    def finish(self, reason: str) -> bytes:
        return self._chunk([CompletionChoice(text="", finish_reason=reason)])

    def usage(self, usage: Usage) -> bytes:
        return self._chunk([], UsageOut.of(usage))

    def whole(
        self, text: str, logprobs: Sequence[TokenLogprob], reason: str, usage: Usage
    ) -> dict[str, Any]:
        out = completion_logprobs(logprobs, self.top)[0] if self.logprobs else None
        return Completion(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[CompletionChoice(text=text, logprobs=out, finish_reason=reason)],
            usage=UsageOut.of(usage),
        ).model_dump()
