"""OpenAI's answer shapes for chat and text completions, whole and streamed (as SSE events),
with the logprobs of their tokens when asked for, and chat answers that call tools."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from libs.protocol.messages import SamplingParams, TokenChunk, TokenLogprob, Usage

from .logprobs import ChatLogprobs, CompletionLogprobs, chat_logprobs, completion_logprobs
from .sse import event
from .tool_calls import ToolPlan
from .tool_output import ParsedCall, ToolAnswer, parse_output


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


class FunctionCallOut(_Response):
    name: str
    arguments: str


class ToolCallOut(_Response):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class ToolCallMessage(_Response):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCallOut]


class ChatChoice(_Response):
    index: int = 0
    message: AssistantMessage | ToolCallMessage
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
        self,
        request_id: str,
        model: str,
        include_usage: bool,
        params: SamplingParams,
        index: int = 0,
    ) -> None:
        self.index = index  # the choice this format renders (n > 1: one format per choice)
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
        return [
            self._chunk(
                [ChatChunkChoice(index=self.index, delta={"role": "assistant", "content": ""})]
            )
        ]

    def text(self, text: str, logprobs: Sequence[TokenLogprob]) -> bytes:
        choice = ChatChunkChoice(
            index=self.index, delta={"content": text}, logprobs=self._logprobs(logprobs)
        )
        return self._chunk([choice])

    def finish(self, reason: str) -> bytes:
        return self._chunk([ChatChunkChoice(index=self.index, delta={}, finish_reason=reason)])

    def usage(self, usage: Usage) -> bytes:
        return self._chunk([], UsageOut.of(usage))

    def whole(
        self, text: str, logprobs: Sequence[TokenLogprob], reason: str, usage: Usage
    ) -> dict[str, Any]:
        choice = ChatChoice(
            index=self.index,
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


class ToolCallFormat(ChatFormat):
    """A chat answer that may call tools (`ToolPlan`): its calls in ``message.tool_calls`` (or
    streamed ``delta.tool_calls``), ``finish_reason`` "tool_calls".

    Streamed, a named function's arguments go out as they come (the whole output is them);
    ``required`` and ``auto`` output is held to the end and sent then, the calls in one chunk:
    a JSON array cannot be told to be calls until it is whole, and ``auto`` text could always
    turn out to be the start of a ``<tool_call>`` block.
    """

    def __init__(
        self,
        request_id: str,
        model: str,
        include_usage: bool,
        params: SamplingParams,
        plan: ToolPlan,
        index: int = 0,
    ) -> None:
        super().__init__(request_id, model, include_usage, params, index)
        self.plan = plan
        self.ids: list[str] = []  # the calls' ids, by index (made once: a stream resumes)
        self.held: list[str] = []
        self.held_logprobs: list[TokenLogprob] = []
        self.calls_sent = False

    def _id(self, index: int) -> str:
        while len(self.ids) <= index:
            self.ids.append(f"call_{secrets.token_hex(12)}")
        return self.ids[index]

    def _calls(self, calls: Sequence[ParsedCall]) -> list[ToolCallOut]:
        return [
            ToolCallOut(
                id=self._id(i), function=FunctionCallOut(name=c.name, arguments=c.arguments)
            )
            for i, c in enumerate(calls)
        ]

    def opening(self) -> list[bytes]:
        if self.plan.mode == "auto":
            return super().opening()
        # Named and required answers are calls only, as OpenAI streams them.
        return [
            self._chunk(
                [ChatChunkChoice(index=self.index, delta={"role": "assistant", "content": None})]
            )
        ]

    def _reason(self, answer: ToolAnswer, reason: str) -> str:
        return "tool_calls" if answer.calls and reason == "stop" else reason

    def tokens(self, chunk: TokenChunk) -> bytes | None:
        if self.plan.mode == "named":
            return super().tokens(chunk)
        self.held.append(chunk.text)
        self.held_logprobs.extend(chunk.logprobs or ())
        return None

    def text(self, text: str, logprobs: Sequence[TokenLogprob]) -> bytes:
        # Named: the text is the arguments of the one call.
        call: dict[str, Any] = {"index": 0, "function": {"arguments": text}}
        if not self.calls_sent:
            self.calls_sent = True
            call = {**call, "id": self._id(0), "type": "function"}
            call["function"] = {"name": self.plan.allowed[0], "arguments": text}
        choice = ChatChunkChoice(
            index=self.index, delta={"tool_calls": [call]}, logprobs=self._logprobs(logprobs)
        )
        return self._chunk([choice])

    def finish(self, reason: str) -> bytes:
        if self.plan.mode == "named":
            opening = b"" if self.calls_sent else self.text("", ())
            return opening + super().finish("tool_calls" if reason == "stop" else reason)
        answer = parse_output(self.plan, "".join(self.held))
        delta: dict[str, Any] = {}
        if answer.content:
            delta["content"] = answer.content
        if answer.calls:
            delta["tool_calls"] = [
                {"index": i, **call.model_dump()}
                for i, call in enumerate(self._calls(answer.calls))
            ]
        held = b""
        if delta or (self.logprobs and self.held_logprobs):
            logprobs = self._logprobs(self.held_logprobs)
            held = self._chunk([ChatChunkChoice(index=self.index, delta=delta, logprobs=logprobs)])
        return held + super().finish(self._reason(answer, reason))

    def whole(
        self, text: str, logprobs: Sequence[TokenLogprob], reason: str, usage: Usage
    ) -> dict[str, Any]:
        answer = parse_output(self.plan, text)
        if not answer.calls:
            return super().whole(answer.content or "", logprobs, reason, usage)
        message = ToolCallMessage(content=answer.content, tool_calls=self._calls(answer.calls))
        choice = ChatChoice(
            index=self.index,
            message=message,
            logprobs=self._logprobs(logprobs),
            finish_reason=self._reason(answer, reason),
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
        return self._chunk(
            [CompletionChoice(index=self.index, text=text, logprobs=out, finish_reason=None)]
        )

    def finish(self, reason: str) -> bytes:
        return self._chunk([CompletionChoice(index=self.index, text="", finish_reason=reason)])

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
            choices=[
                CompletionChoice(index=self.index, text=text, logprobs=out, finish_reason=reason)
            ],
            usage=UsageOut.of(usage),
        ).model_dump()
