"""The worker renders chats, tools and tool-call history with the model's chat template, and
refuses tools or calls that the template would leave out."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from libs.protocol.errors import BadRequestError
from libs.protocol.messages import ChatMessage, ToolCall
from services.worker.chat_template import render_chat, template_messages

pytestmark = pytest.mark.unit

PLAIN_CHATML = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "weather",
            "description": "The weather now",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
TOOLS_JSON = json.dumps(TOOLS)
QUESTION = ChatMessage(role="user", content="Weather in Paris?")
HISTORY = [
    ChatMessage(role="system", content="Be brief."),
    QUESTION,
    ChatMessage(
        role="assistant",
        content="",
        tool_calls=[ToolCall(id="c1", name="weather", arguments='{"city": "Paris"}')],
    ),
    ChatMessage(role="tool", content="sunny", tool_call_id="c1", name="weather"),
]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from libs.demo import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="module")
def plain(tokenizer: Any) -> Any:
    """The demo tokenizer with a ChatML template that knows nothing of tools."""
    other = copy.deepcopy(tokenizer)
    other.chat_template = PLAIN_CHATML
    return other


def test_plain_messages_render_as_role_and_content_only(tokenizer: Any) -> None:
    messages = [ChatMessage(role="system", content="Be brief."), QUESTION]
    assert template_messages(messages) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
    ]
    text = render_chat(tokenizer, "demo", messages)
    assert text == tokenizer.apply_chat_template(
        template_messages(messages), add_generation_prompt=True, tokenize=False
    )
    assert text.endswith("<|im_start|>assistant\n")


def test_tools_go_into_the_system_prompt(tokenizer: Any) -> None:
    text = render_chat(tokenizer, "demo", HISTORY[:2], TOOLS_JSON)
    system, rest = text.split("<|im_end|>\n", 1)
    assert system.startswith("<|im_start|>system\nBe brief.\n\n# Tools")
    assert "<tools>\n" + json.dumps(TOOLS[0]) + "\n</tools>" in system
    assert rest == "<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n"
    alone = render_chat(tokenizer, "demo", [QUESTION], TOOLS_JSON)
    assert alone.startswith("<|im_start|>system\n# Tools")


def test_tool_call_history_renders_as_hermes_blocks(tokenizer: Any) -> None:
    assert template_messages(HISTORY)[2:] == [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": {"city": "Paris"}},
                }
            ],
        },
        {"role": "tool", "content": "sunny", "tool_call_id": "c1", "name": "weather"},
    ]
    text = render_chat(tokenizer, "demo", HISTORY, TOOLS_JSON)
    assert text.endswith(
        "<|im_start|>assistant\n"
        '<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n</tool_call>'
        "<|im_end|>\n"
        "<|im_start|>user\n<tool_response>\nsunny\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    # Arguments that are not a JSON object stay text.
    odd = ChatMessage(
        role="assistant", content="", tool_calls=[ToolCall(id="c", name="f", arguments="oops")]
    )
    assert template_messages([odd])[0]["tool_calls"][0]["function"]["arguments"] == "oops"


def test_a_template_without_tools_is_400_naming_tools(plain: Any) -> None:
    with pytest.raises(BadRequestError, match="does not support tools") as info:
        render_chat(plain, "plain", [QUESTION], TOOLS_JSON)
    assert info.value.detail == {"param": "tools"}
    # Without tools (tool_choice "none": the router sends none) the chat renders as ever.
    assert render_chat(plain, "plain", [QUESTION]).startswith("<|im_start|>user\n")


def test_a_template_without_tool_calls_is_400_naming_messages(plain: Any) -> None:
    with pytest.raises(BadRequestError, match="tool calls") as info:
        render_chat(plain, "plain", HISTORY)
    assert info.value.detail == {"param": "messages"}
    # A tool result alone is text the template renders.
    result = ChatMessage(role="tool", content="sunny", tool_call_id="c1")
    assert "sunny" in render_chat(plain, "plain", [QUESTION, result])


def test_bad_tools_json_and_missing_template_are_400(tokenizer: Any, plain: Any) -> None:
    with pytest.raises(BadRequestError, match="JSON list"):
        render_chat(tokenizer, "demo", [QUESTION], '{"type": "function"}')
    none = copy.deepcopy(plain)
    none.chat_template = None
    with pytest.raises(BadRequestError, match="no chat template"):
        render_chat(none, "none", [QUESTION])
