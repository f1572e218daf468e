"""OpenAI request validation and its translation into sampling parameters."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from libs.protocol.messages import MAX_TOKENS_LIMIT, ChatMessage
from services.router.protocol import ChatCompletionRequest, CompletionRequest

pytestmark = pytest.mark.unit

MSGS = [{"role": "user", "content": "hi"}]


def chat(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": MSGS, **fields})


def completion(**fields: Any) -> CompletionRequest:
    return CompletionRequest.model_validate({"model": "m", "prompt": "p", **fields})


def test_defaults_map_to_openai_behaviour() -> None:
    p = chat().params(default_max_tokens=1024)
    assert (p.max_tokens, p.temperature, p.top_p, p.seed, p.stop) == (1024, 1.0, 1.0, None, [])
    assert completion().params().max_tokens == 16


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert chat(max_tokens=50, max_completion_tokens=3).params(1024).max_tokens == 3
    assert chat(max_tokens=50).params(1024).max_tokens == 50


@pytest.mark.parametrize("value", [0, -1, MAX_TOKENS_LIMIT + 1])
@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_absurd_token_limits_are_refused_clearly(field: str, value: int) -> None:
    with pytest.raises(ValidationError, match=f"{field} must be between 1 and {MAX_TOKENS_LIMIT}"):
        chat(**{field: value})


def test_stop_may_be_a_string_or_a_list_and_empty_stops_are_dropped() -> None:
    assert chat(stop="END").params(8).stop == ["END"]
    assert chat(stop=["a", "", "b"]).params(8).stop == ["a", "b"]
    with pytest.raises(ValidationError, match="at most 16 stop sequences"):
        chat(stop=[str(i) for i in range(17)])


def test_top_p_zero_means_greedy() -> None:
    p = chat(top_p=0, temperature=0.8).params(8)
    assert (p.temperature, p.top_p) == (0.0, 1.0)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"n": 2}, "n must be 1"),
        ({"logprobs": True}, "logprobs are not supported"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"seed": -1}, "seed"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "narrator", "content": "x"}]}, "role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "only text content parts",
        ),
    ],
)
def test_chat_refuses_what_it_cannot_honour(fields: dict[str, Any], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        chat(**fields)


def test_unknown_and_neutral_fields_are_ignored() -> None:
    req = chat(user="u", n=1, logprobs=False, presence_penalty=0, tools=[], new_field={"a": 1})
    assert req.params(8).max_tokens == 8


def test_messages_convert_to_bus_messages() -> None:
    req = chat(
        messages=[
            {"role": "system", "content": "s"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
            {"role": "assistant", "content": None, "tool_calls": []},
        ]
    )
    assert [m.to_bus() for m in req.messages] == [
        ChatMessage(role="system", content="s"),
        ChatMessage(role="user", content="ab"),
        ChatMessage(role="assistant", content=""),
    ]


def test_usage_is_included_only_for_streams_that_ask() -> None:
    assert chat(stream=True, stream_options={"include_usage": True}).include_usage
    assert not chat(stream=False, stream_options={"include_usage": True}).include_usage
    assert not chat(stream=True).include_usage


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [("text", "text"), (["text"], "text"), ([1, 2, 3], [1, 2, 3]), ([[4, 5]], [4, 5])],
)
def test_completion_prompt_forms(prompt: Any, expected: Any) -> None:
    assert completion(prompt=prompt).text_or_ids() == expected


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"prompt": ["a", "b"]}, "one prompt per request"),
        ({"prompt": [[1], [2]]}, "one prompt per request"),
        ({"prompt": []}, "must not be empty"),
        ({"prompt": [[]]}, "must not be empty"),
        ({"prompt": [1, -2]}, "must not be negative"),
        ({"echo": True}, "echo is not supported"),
        ({"best_of": 3}, "best_of must be 1"),
        ({"logprobs": 2}, "logprobs are not supported"),
        ({"suffix": "tail"}, "suffix is not supported"),
        ({"n": 3}, "n must be 1"),
    ],
)
def test_completion_refuses_what_it_cannot_honour(fields: dict[str, Any], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        completion(**fields)
