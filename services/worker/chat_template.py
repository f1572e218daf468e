"""Renders a chat (messages, tools, tool-call history) into prompt text with the model's chat
template, and refuses what the template would silently leave out.

Messages go to the template in the shape Hugging Face templates expect (Qwen2.5, Hermes,
Llama 3.1, Mistral...): an assistant's calls as ``{"type": "function", "function": {"name",
"arguments"}}`` with the arguments parsed into a dict, a tool result as ``{"role": "tool",
"content", "tool_call_id"}``. A template that ignores the tools (or the calls in the history)
renders the same text with and without them: that is a 400 naming ``tools`` (``messages``),
not a prompt in which the model never sees what it is asked to use.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from libs.protocol.errors import BadRequestError
from libs.protocol.messages import ChatMessage, ToolCall


def render_chat(
    tokenizer: Any, model: str, messages: Sequence[ChatMessage], tools_json: str = ""
) -> str:
    """The prompt text of a chat, ending with the assistant's turn.

    Raises:
        BadRequestError: the model has no chat template, the template fails on these messages,
            or it renders neither the tools nor (when the history has some) the tool calls.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise BadRequestError(f"model {model!r} has no chat template: send a prompt instead")
    conversation = template_messages(messages)
    tools = _tools(tools_json)
    text = _render(tokenizer, conversation, tools)
    if tools is not None and text == _render(tokenizer, conversation, None):
        raise BadRequestError(
            f"model {model!r}: the model's chat template does not support tools "
            '(tool_choice "none" leaves them out of the prompt)',
            detail={"param": "tools"},
        )
    if any(m.tool_calls for m in messages):
        without_calls = [{k: v for k, v in m.items() if k != "tool_calls"} for m in conversation]
        if text == _render(tokenizer, without_calls, tools):
            raise BadRequestError(
                f"model {model!r}: the model's chat template does not render the tool calls "
                "of assistant messages",
                detail={"param": "messages"},
            )
    return text


def template_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """``messages`` as chat templates take them: a plain message is exactly ``{"role",
    "content"}`` (some templates test whether a key is present, not whether it is empty)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        entry: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls:
            entry["tool_calls"] = [_call(c) for c in m.tool_calls]
        if m.role == "tool":
            entry["tool_call_id"] = m.tool_call_id
            if m.name:
                entry["name"] = m.name
        out.append(entry)
    return out


def _call(call: ToolCall) -> dict[str, Any]:
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": _arguments(call.arguments)},
    }


def _arguments(text: str) -> Any:
    """Templates write the arguments with ``tojson``, so they want the parsed object; text that
    is not a JSON object stays text (templates that test ``is string`` write it as it is)."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, dict) else text


def _tools(tools_json: str) -> list[dict[str, Any]] | None:
    if not tools_json:
        return None
    try:
        tools = json.loads(tools_json)
    except ValueError:
        tools = None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise BadRequestError(
            "tools_json must be a JSON list of objects", detail={"param": "tools"}
        )
    return tools or None


def _render(
    tokenizer: Any, conversation: list[dict[str, Any]], tools: list[dict[str, Any]] | None
) -> str:
    try:
        text: str = tokenizer.apply_chat_template(
            conversation, tools=tools, add_generation_prompt=True, tokenize=False
        )
    except Exception as exc:  # jinja raises whatever the template raises
        raise BadRequestError(f"cannot render the chat messages: {exc}") from None
    return text
