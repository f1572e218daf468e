"""Every field of the openai SDK's request bodies is honoured, accepted as harmless, or refused
with a 400 naming it; a field the SDK gains later fails here until someone classifies it."""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass
from typing import Any

import pytest
import typing_extensions
from openai.types import completion_create_params as completion_sdk
from openai.types.chat import ChatCompletionStreamOptionsParam, ChatCompletionUserMessageParam
from openai.types.chat import completion_create_params as chat_sdk
from pydantic import ValidationError

from services.router.api_schema import ChatCompletionRequest, CompletionRequest, _Sampling
from services.router.errors import to_api_error
from services.router.openai_fields import (
    CHAT_REFUSED,
    COMPLETION_REFUSED,
    CONTENT_PART_IGNORED,
    MESSAGE_REFUSED,
    REQUEST_IGNORED,
    STREAM_OPTIONS_IGNORED,
    Refused,
)

pytestmark = pytest.mark.unit

DEFAULT_MAX_TOKENS = 1024

TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}

# Honoured: a value that changes what the worker is asked to do or how the answer looks, and
# the fields it needs beside it to do so.
SHARED_HONOURED: dict[str, tuple[object, dict[str, object]]] = {
    "model": ("other", {}),
    "n": (3, {}),
    "max_tokens": (5, {}),
    "temperature": (0.5, {}),
    "top_p": (0.5, {}),
    "presence_penalty": (0.5, {}),
    "frequency_penalty": (0.5, {}),
    "logit_bias": ({"7": -100}, {}),
    "seed": (3, {}),
    "stop": ("END", {}),
    "stream": (True, {}),
    "stream_options": ({"include_usage": True}, {"stream": True}),
    # vLLM's extensions
    "top_k": (40, {}),
    "min_p": (0.1, {}),
    "repetition_penalty": (1.1, {}),
    "min_tokens": (2, {}),
    "ignore_eos": (True, {}),
    "stop_token_ids": ([5], {}),
    # Ollama's
    "keep_alive": ("5m", {}),
}
CHAT_HONOURED: dict[str, tuple[object, dict[str, object]]] = {
    **SHARED_HONOURED,
    "messages": ([{"role": "user", "content": "other"}], {}),
    "max_completion_tokens": (5, {}),
    "logprobs": (True, {}),
    "top_logprobs": (3, {"logprobs": True}),
    "response_format": ({"type": "json_object"}, {}),
    "tools": ([TOOL], {}),
    "tool_choice": ("required", {"tools": [TOOL]}),
    "parallel_tool_calls": (False, {"tools": [TOOL], "tool_choice": "required"}),
}
COMPLETION_HONOURED: dict[str, tuple[object, dict[str, object]]] = {
    **SHARED_HONOURED,
    "prompt": ("other", {}),
    "logprobs": (2, {}),
}

# A value of each refused field that sllm cannot honour.
CHAT_REFUSED_VALUES: dict[str, object] = {
    "functions": [{"name": "f", "parameters": {}}],
    "function_call": {"name": "f"},
    "audio": {"voice": "alloy", "format": "wav"},
    "modalities": ["text", "audio"],
    "reasoning_effort": "low",
    "verbosity": "low",
    "web_search_options": {},
    "moderation": {"model": "omni-moderation-latest"},
}
COMPLETION_REFUSED_VALUES: dict[str, object] = {
    "best_of": 3,
    "echo": True,
    "suffix": "tail",
}
# A value of each harmless field (accepted and ignored).
HARMLESS_VALUES: dict[str, object] = {
    "user": "u-1",
    "safety_identifier": "s-1",
    "metadata": {"k": "v"},
    "store": True,
    "service_tier": "flex",
    "prompt_cache_key": "k",
    "prompt_cache_retention": "24h",
    "prompt_cache_options": {"mode": "explicit", "ttl": "30m"},
    "prediction": {"type": "content", "content": "the answer"},
}


@dataclass(frozen=True)
class Route:
    model: type[_Sampling]
    base: dict[str, object]
    sdk: frozenset[str]
    honoured: dict[str, tuple[object, dict[str, object]]]
    refused: typing.Mapping[str, Refused]
    refused_values: dict[str, object]


def _fields(typed_dict: type) -> frozenset[str]:
    return frozenset(typing.get_type_hints(typed_dict))


ROUTES = {
    "chat": Route(
        ChatCompletionRequest,
        {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        _fields(chat_sdk.CompletionCreateParamsStreaming),  # the base's fields and `stream`
        CHAT_HONOURED,
        CHAT_REFUSED,
        CHAT_REFUSED_VALUES,
    ),
    "completions": Route(
        CompletionRequest,
        {"model": "m", "prompt": "hi"},
        _fields(completion_sdk.CompletionCreateParamsStreaming),
        COMPLETION_HONOURED,
        COMPLETION_REFUSED,
        COMPLETION_REFUSED_VALUES,
    ),
}


def effect(req: _Sampling) -> dict[str, object]:
    """Everything of a request that reaches the worker (`GenerateRequest`) or shapes the answer."""
    prompt: object
    tools: object = None
    if isinstance(req, ChatCompletionRequest):
        prompt, params = req.bus_messages(), req.params(DEFAULT_MAX_TOKENS)
        tools = req.tool_plan
    else:
        assert isinstance(req, CompletionRequest)
        prompt, params = req.text_or_ids(), req.params()
    return {
        "model": req.model,
        "prompt": prompt,
        "tools": tools,
        "params": params,
        "keep_alive": req.keep_alive,
        "stream": bool(req.stream),
        "include_usage": req.include_usage,
        "choices": req.n or 1,
    }


def parse(route: Route, body: dict[str, object]) -> _Sampling:
    # As the hot path reads a body.
    return route.model.model_validate_json(json.dumps(body))


def assert_refused(route: Route, body: dict[str, object], param: str) -> str:
    """``body`` gets a 400 naming ``param``; returns its message."""
    with pytest.raises(ValidationError) as info:
        parse(route, body)
    error = to_api_error(info.value, retry_after=1)
    assert (error.status, error.param) == (400, param), error.message
    assert error.message.startswith(f"{param}: "), error.message
    return error.message


CASES = [(name, field) for name, route in ROUTES.items() for field in sorted(route.sdk)]


@pytest.mark.parametrize(("route_name", "field"), CASES)
def test_every_sdk_field_is_honoured_refused_or_harmless(route_name: str, field: str) -> None:
    route = ROUTES[route_name]
    if field in route.honoured:
        value, needs = route.honoured[field]
        base = {**route.base, **needs}
        assert effect(parse(route, {**base, field: value})) != effect(parse(route, base))
    elif field in route.refused:
        message = assert_refused(route, {**route.base, field: route.refused_values[field]}, field)
        assert route.refused[field].reason in message
    elif field in REQUEST_IGNORED:
        req = parse(route, {**route.base, field: HARMLESS_VALUES[field]})
        assert effect(req) == effect(parse(route, route.base))
    else:
        pytest.fail(
            f"{route_name}: the openai SDK's field {field!r} is neither honoured, refused nor "
            "harmless: decide (services/router/openai_fields.py) and list it here"
        )


@pytest.mark.parametrize("route_name", ROUTES)
def test_the_three_sets_are_disjoint_and_complete(route_name: str) -> None:
    route = ROUTES[route_name]
    honoured, refused = set(route.honoured), set(route.refused)
    assert not honoured & refused
    assert not honoured & REQUEST_IGNORED
    assert not refused & REQUEST_IGNORED
    # What the model declares is exactly what it honours, and each is tested above (or below).
    assert honoured == set(route.model.model_fields)
    assert set(route.refused_values) == refused
    assert set(HARMLESS_VALUES) == REQUEST_IGNORED


@pytest.mark.parametrize(
    ("route_name", "field"), [(n, f) for n, r in ROUTES.items() for f in r.honoured]
)
def test_every_honoured_field_changes_the_request(route_name: str, field: str) -> None:
    # The SDK's fields are covered above; this covers the extensions (vLLM's, Ollama's) too.
    route = ROUTES[route_name]
    value, needs = route.honoured[field]
    base = {**route.base, **needs}
    assert effect(parse(route, {**base, field: value})) != effect(parse(route, base))


@pytest.mark.parametrize(
    ("route_name", "field"), [(n, f) for n, r in ROUTES.items() for f in r.refused]
)
def test_a_refused_field_with_a_neutral_value_is_accepted(route_name: str, field: str) -> None:
    route = ROUTES[route_name]
    for value in route.refused[field].neutral:
        req = parse(route, {**route.base, field: value})
        assert effect(req) == effect(parse(route, route.base))


@pytest.mark.parametrize("field", ["guided_json", "chat_template_kwargs", "echo_prompt"])
@pytest.mark.parametrize("route_name", ROUTES)
def test_an_unknown_field_is_400_naming_it(route_name: str, field: str) -> None:
    route = ROUTES[route_name]
    message = assert_refused(route, {**route.base, field: {"x": 1}}, field)
    assert "unknown field" in message


# --- inside the body: messages, content parts, stream options --------------------------------


def _typeddicts(tp: object) -> list[type]:
    """The TypedDicts in a type (unions, iterables...)."""
    if isinstance(tp, type) and typing_extensions.is_typeddict(tp):
        return [tp]
    return [t for arg in typing.get_args(tp) for t in _typeddicts(arg)]


CHAT = ROUTES["chat"]
MESSAGE_TYPES = _typeddicts(typing.get_type_hints(chat_sdk.CompletionCreateParamsBase)["messages"])
CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
# The tool-call history: honoured (with the fields each needs beside it).
MESSAGE_HONOURED: dict[str, dict[str, object]] = {
    "tool_calls": {"role": "assistant", "tool_calls": [CALL]},
    "tool_call_id": {"role": "tool", "tool_call_id": "c1"},
}
MESSAGE_REFUSED_VALUES: dict[str, object] = {
    "function_call": {"name": "f", "arguments": "{}"},
    "name": "ann",
    "refusal": "I can't",
    "audio": {"id": "a1"},
}


def _role(message_type: type) -> str:
    (role,) = typing.get_args(typing.get_type_hints(message_type)["role"])
    return str(role)


def _bus(body: dict[str, object]) -> object:
    req = parse(CHAT, body)
    assert isinstance(req, ChatCompletionRequest)
    return req.bus_messages()


@pytest.mark.parametrize("message_type", MESSAGE_TYPES, ids=lambda t: t.__name__)
def test_every_message_field_is_honoured_or_refused(message_type: type) -> None:
    role = _role(message_type)
    required = {"tool_call_id": "c1"} if role == "tool" else {}
    base_message = {"role": role, "content": "x", **required}
    body = {**CHAT.base, "messages": [{"role": "user", "content": "hi"}, base_message]}
    if role == "function":  # the deprecated function results: refused for their role
        assert_refused(CHAT, body, "messages.1.role")
        return
    parse(CHAT, body)
    for field in sorted(_fields(message_type) - {"role", "content", *required}):
        if field in MESSAGE_HONOURED:
            message = {**base_message, **MESSAGE_HONOURED[field]}
            changed = {**body, "messages": [{"role": "user", "content": "hi"}, message]}
            assert _bus(changed) != _bus(body)
            continue
        assert field in MESSAGE_REFUSED, f"{role} messages' field {field!r} is unclassified"
        message = {**base_message, field: MESSAGE_REFUSED_VALUES[field]}
        assert_refused(CHAT, {**body, "messages": [message]}, f"messages.0.{field}")
        for neutral in MESSAGE_REFUSED[field].neutral:
            parse(CHAT, {**body, "messages": [{**base_message, field: neutral}]})


def test_tool_messages_are_honoured() -> None:
    # The SDK's tool message (role, content, tool_call_id) reaches the bus whole; the function
    # it answers is found in the history's calls.
    history = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "content": [{"type": "text", "text": "42"}], "tool_call_id": "c1"},
    ]
    messages = _bus({**CHAT.base, "messages": history})
    assert isinstance(messages, list)
    call, result = messages[1], messages[2]
    assert (call.content, [(c.id, c.name, c.arguments) for c in call.tool_calls]) == (
        "",
        [("c1", "f", "{}")],
    )
    assert (result.role, result.content, result.tool_call_id, result.name) == (
        "tool",
        "42",
        "c1",
        "f",
    )


def test_only_text_content_parts_are_honoured() -> None:
    parts = _typeddicts(typing.get_type_hints(ChatCompletionUserMessageParam)["content"])
    kinds = {str(typing.get_args(typing.get_type_hints(p)["type"])[0]): _fields(p) for p in parts}
    assert kinds.pop("text") - {"type", "text"} == CONTENT_PART_IGNORED
    text = {"type": "text", "text": "x", "prompt_cache_breakpoint": {"type": "ephemeral"}}
    body = {**CHAT.base, "messages": [{"role": "user", "content": [text]}]}
    req = parse(CHAT, body)
    assert isinstance(req, ChatCompletionRequest)
    assert req.messages[0].to_bus().content == "x"
    assert kinds, "the SDK has no other content parts any more"
    for kind in kinds:
        part = {"type": kind, kind: {}}
        body = {**CHAT.base, "messages": [{"role": "user", "content": [text, part]}]}
        message = assert_refused(CHAT, body, "messages.0.content.1.type")
        assert "only text content parts" in message


def test_stream_options_fields_are_honoured_or_harmless() -> None:
    fields = _fields(ChatCompletionStreamOptionsParam)
    assert fields - {"include_usage"} == STREAM_OPTIONS_IGNORED
    options: dict[str, Any] = {"include_usage": True, "include_obfuscation": True}
    assert parse(CHAT, {**CHAT.base, "stream": True, "stream_options": options}).include_usage
