"""A chat request's messages: text (or text parts), and the tool-call history (an assistant's
``tool_calls``, ``tool`` messages with the result of one), and their form on the bus."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, TypeAdapter, field_validator, model_validator

from libs.protocol.messages import ChatMessage, ToolCall

from .openai_fields import (
    CONTENT_PART_IGNORED,
    LEGACY_FUNCTIONS,
    MESSAGE_REFUSED,
    RequestPart,
    refuse,
    screen,
)
from .tool_calls import FunctionTyped


class ContentPart(RequestPart):
    IGNORED = CONTENT_PART_IGNORED

    type: Literal["text"]
    text: str

    @model_validator(mode="before")
    @classmethod
    def _screen(cls, data: object) -> object:
        kind = data.get("type") if isinstance(data, dict) else None
        if isinstance(data, dict) and kind != "text":
            # Said first: an image part is refused for what it is, not for its fields.
            refuse(cls, "type", kind, f"only text content parts are supported, got {kind!r}")
        return screen(cls, cls.FIELDS, data, cls.IGNORED, cls.REFUSED)


_CONTENT_PARTS = TypeAdapter(list[ContentPart])


class FunctionCallIn(RequestPart):
    name: str = Field(min_length=1, max_length=256)
    arguments: str


class ToolCallIn(FunctionTyped):
    """A call of an assistant message in the history."""

    id: str = Field(max_length=1024)
    type: Literal["function"]
    function: FunctionCallIn


class ChatMessageIn(RequestPart):
    REFUSED = MESSAGE_REFUSED

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[ToolCallIn] | None = Field(default=None, max_length=1024)  # assistant
    tool_call_id: str | None = Field(default=None, max_length=1024)  # tool: the call answered

    @model_validator(mode="before")
    @classmethod
    def _screen(cls, data: object) -> object:
        role = data.get("role") if isinstance(data, dict) else None
        if role == "function":
            # Said first: the message is refused for what it is, not for its fields.
            refuse(cls, "role", role, f"{LEGACY_FUNCTIONS}: send tool messages")
        return screen(cls, cls.FIELDS, data, cls.IGNORED, cls.REFUSED)

    @field_validator("content", mode="before")
    @classmethod
    def _parts(cls, v: object) -> object:
        # Validated here rather than by the union, whose errors would name each of its members
        # (``content.str``...) instead of the part at fault (``content.0.type``).
        return _CONTENT_PARTS.validate_python(v) if isinstance(v, list) else v

    @model_validator(mode="after")
    def _tool_fields_by_role(self) -> ChatMessageIn:
        if self.tool_calls and self.role != "assistant":
            refuse(type(self), "tool_calls", None, "only assistant messages carry tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            refuse(
                type(self), "tool_call_id", None, "a tool message needs the tool_call_id it answers"
            )
        if self.tool_call_id is not None and self.role != "tool":
            refuse(
                type(self),
                "tool_call_id",
                self.tool_call_id,
                "only tool messages carry tool_call_id",
            )
        return self

    def to_bus(self, function_name: str = "") -> ChatMessage:
        """This message on the bus; ``function_name``: the function whose result a tool
        message is (templates that name it find it in the history's calls)."""
        if isinstance(self.content, list):
            text = "".join(part.text for part in self.content)
        else:
            text = self.content or ""
        if self.role == "tool":
            return ChatMessage(
                role="tool",
                content=text,
                tool_call_id=self.tool_call_id or "",
                name=function_name,
            )
        calls = [
            ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments)
            for c in self.tool_calls or ()
        ]
        return ChatMessage(role=self.role, content=text, tool_calls=calls)
