"""OpenAI request validation and its translation into sampling parameters."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError

from libs.protocol.messages import MAX_TOKENS_LIMIT, ChatMessage, SamplingParams, TokenBias
from services.router.api_schema import ChatCompletionRequest, CompletionRequest
from services.router.errors import ApiError, to_api_error

pytestmark = pytest.mark.unit

MSGS = [{"role": "user", "content": "hi"}]


def chat(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": MSGS, **fields})


def completion(**fields: Any) -> CompletionRequest:
    return CompletionRequest.model_validate({"model": "m", "prompt": "p", **fields})


def test_defaults_map_to_openai_behaviour() -> None:
    p = chat().params(default_max_tokens=1024)
    assert p == SamplingParams(max_tokens=1024)  # SamplingParams' defaults change nothing
    assert completion().params() == SamplingParams(max_tokens=16)


def test_sampling_fields_map_to_sampling_params() -> None:
    p = chat(
        top_k=40,
        min_p=0.05,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        repetition_penalty=1.2,
        logit_bias={"7": 100, "12": -3.5},
        stop_token_ids=[2, 9],
        min_tokens=3,
        ignore_eos=True,
        seed=11,
        max_tokens=8,
    ).params(1024)
    assert (p.top_k, p.min_p, p.presence_penalty, p.frequency_penalty) == (40, 0.05, 0.5, -0.5)
    assert p.repetition_penalty == 1.2
    assert p.logit_bias == [TokenBias(token_id=7, bias=100), TokenBias(token_id=12, bias=-3.5)]
    assert (p.stop_token_ids, p.min_tokens, p.ignore_eos, p.seed) == ([2, 9], 3, True, 11)


@pytest.mark.parametrize("top_k", [-1, 0])
def test_top_k_minus_one_or_zero_is_off_as_in_vllm(top_k: int) -> None:
    assert chat(top_k=top_k).params(8).top_k == 0


def test_chat_logprobs_and_top_logprobs() -> None:
    assert chat(logprobs=True).params(8).model_dump(include={"logprobs", "top_logprobs"}) == {
        "logprobs": True,
        "top_logprobs": 0,
    }
    p = chat(logprobs=True, top_logprobs=5).params(8)
    assert (p.logprobs, p.top_logprobs) == (True, 5)
    assert not chat(logprobs=False, top_logprobs=0).params(8).logprobs


@pytest.mark.parametrize(("n", "expected"), [(None, (False, 0)), (0, (True, 0)), (5, (True, 5))])
def test_completion_logprobs_is_the_number_of_alternatives(
    n: int | None, expected: tuple[bool, int]
) -> None:
    p = completion(logprobs=n).params()
    assert (p.logprobs, p.top_logprobs) == expected


def test_min_tokens_above_max_tokens_is_400_naming_min_tokens() -> None:
    assert chat(min_tokens=8, max_tokens=8).params(1024).min_tokens == 8
    too_many: list[Callable[[], SamplingParams]] = [
        lambda: chat(min_tokens=9, max_tokens=8).params(1024),
        lambda: chat(min_tokens=9, max_completion_tokens=8, max_tokens=50).params(1024),
        lambda: chat(min_tokens=2000).params(1024),  # the default limit counts too
        lambda: completion(min_tokens=17).params(),  # completions' default is 16
    ]
    for call in too_many:
        with pytest.raises(ApiError) as info:
            call()
        assert (info.value.status, info.value.param) == (400, "min_tokens")
        assert "min_tokens" in info.value.message


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
        ({"n": 17}, "less than or equal to 16"),
        ({"top_logprobs": 2}, "top_logprobs needs logprobs: true"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"temperature": 2.5}, "temperature"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -3}, "frequency_penalty"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"top_k": -2}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"min_tokens": -1}, "min_tokens"),
        ({"stop_token_ids": [-1]}, "stop_token_ids"),
        ({"logit_bias": {"5": 101}}, "logit_bias"),
        ({"logit_bias": {"-5": 1}}, "keys must be token ids"),
        ({"logit_bias": {"the": 1}}, "keys must be token ids"),
        ({"logit_bias": {str(i): 1 for i in range(301)}}, "at most 300 tokens"),
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


def test_harmless_and_neutral_fields_are_accepted() -> None:
    req = chat(user="u", n=1, logprobs=False, presence_penalty=0, tools=[], tool_choice="none")
    assert req.params(8) == SamplingParams(max_tokens=8)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"new_field": 1}, "new_field"),
        ({"stream_options": {"include_usage": True, "new_field": 1}}, "stream_options.new_field"),
        ({"messages": [{"role": "user", "content": "x", "new_field": 1}]}, "messages.0.new_field"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "x", "new_field": 1}]}
                ]
            },
            "messages.0.content.0.new_field",
        ),
    ],
)
def test_unknown_fields_are_refused_wherever_they_are(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(ValidationError) as info:
        chat(**fields)
    error = to_api_error(info.value, retry_after=1)
    assert (error.status, error.param) == (400, param)
    assert "unknown field" in error.message


def test_messages_convert_to_bus_messages() -> None:
    req = chat(
        messages=[
            {"role": "system", "content": "s"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
            {"role": "assistant", "content": None, "tool_calls": []},
            {"role": "developer", "content": [{"type": "text", "text": "d"}], "name": ""},
        ]
    )
    assert [m.to_bus() for m in req.messages] == [
        ChatMessage(role="system", content="s"),
        ChatMessage(role="user", content="ab"),
        ChatMessage(role="assistant", content=""),
        ChatMessage(role="developer", content="d"),
    ]


TOOL_CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


@pytest.mark.parametrize(
    ("message", "param"),
    [
        ({"role": "user", "content": "hi", "tool_calls": [TOOL_CALL]}, "tool_calls"),
        (
            {"role": "assistant", "tool_calls": [{**TOOL_CALL, "type": "custom", "custom": {}}]},
            "tool_calls.0.type",
        ),
        ({"role": "assistant", "tool_calls": [{**TOOL_CALL, "function": {}}]}, "tool_calls.0"),
        ({"role": "tool", "content": "42"}, "tool_call_id"),
        ({"role": "user", "content": "42", "tool_call_id": "c1"}, "tool_call_id"),
        (
            {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": ""}},
            "function_call",
        ),
        ({"role": "function", "name": "f", "content": "42"}, "role"),
        ({"role": "user", "name": "ann", "content": "hi"}, "name"),
        ({"role": "assistant", "content": None, "refusal": "no"}, "refusal"),
        ({"role": "assistant", "content": None, "audio": {"id": "a1"}}, "audio"),
    ],
)
def test_malformed_tool_call_history_and_other_message_fields_are_refused(
    message: dict[str, Any], param: str
) -> None:
    body = {"model": "m", "messages": [*MSGS, message]}
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate(body)
    error = to_api_error(info.value, retry_after=1)
    assert error.status == 400
    assert (error.param or "").startswith(f"messages.1.{param}"), error.message


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
        ({"logprobs": 6}, "logprobs"),
        ({"logprobs": -1}, "logprobs"),
        ({"suffix": "tail"}, "suffix \\(insertion\\) is not supported"),
        ({"n": 0}, "greater than or equal to 1"),
    ],
)
def test_completion_refuses_what_it_cannot_honour(fields: dict[str, Any], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        completion(**fields)


def test_response_format_maps_to_the_grammar() -> None:
    from services.router.api_schema import ChatCompletionRequest

    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "A", "schema": schema, "strict": True}}
    p = ChatCompletionRequest.model_validate({**base, "response_format": fmt}).params(16)
    assert p.grammar is not None
    assert p.grammar.kind == "json_schema"
    assert json.loads(p.grammar.json_schema) == schema
    obj = ChatCompletionRequest.model_validate({**base, "response_format": {"type": "json_object"}})
    assert obj.params(16).grammar is not None
    text = ChatCompletionRequest.model_validate({**base, "response_format": {"type": "text"}})
    assert text.params(16).grammar is None
    for bad in ({"type": "json_schema"}, {"type": "xml"}, {"type": "text", "json_schema": fmt}):
        with pytest.raises(ValidationError):
            ChatCompletionRequest.model_validate({**base, "response_format": bad})
