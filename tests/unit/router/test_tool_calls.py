"""Tool calling at the edge: tools and tool_choice become a plan (what the template renders,
the output's constraint), and the output becomes tool calls."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from services.router.api_schema import ChatCompletionRequest
from services.router.errors import to_api_error
from services.router.tool_calls import NO_PARAMETERS, ToolPlan
from services.router.tool_output import ParsedCall, ToolAnswer, parse_output

pytestmark = pytest.mark.unit

WEATHER: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
    "required": ["city"],
}
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {"name": "weather", "description": "Weather now", "parameters": WEATHER},
    },
    {"type": "function", "function": {"name": "time", "strict": True}},
]


def chat(**fields: Any) -> ChatCompletionRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return ChatCompletionRequest.model_validate_json(json.dumps(body))


def plan(**fields: Any) -> ToolPlan:
    return chat(tools=TOOLS, **fields).tool_plan


def schema_of(p: ToolPlan) -> Any:
    assert p.grammar is not None
    assert p.grammar.kind == "json_schema"
    return json.loads(p.grammar.json_schema)


def refused(param: str, **fields: Any) -> str:
    with pytest.raises(ValidationError) as info:
        chat(**fields)
    error = to_api_error(info.value, retry_after=1)
    assert (error.status, error.param) == (400, param), error.message
    return error.message


# --- the plan -------------------------------------------------------------------------------


def test_without_tools_nothing_changes() -> None:
    for choice in (None, "none", "auto"):
        p = chat(tool_choice=choice).tool_plan
        assert (p.mode, p.tools_json(), p.grammar) == ("none", "", None)
    assert chat(tools=[]).tool_plan.mode == "none"


def test_auto_is_the_default_with_tools_and_renders_them_unconstrained() -> None:
    p = plan()
    assert (p.mode, p.allowed, p.parallel, p.grammar) == ("auto", ("weather", "time"), True, None)
    assert json.loads(p.tools_json()) == [
        {
            "type": "function",
            "function": {"name": "weather", "description": "Weather now", "parameters": WEATHER},
        },
        # No parameters: a function without arguments; strict means nothing to the template.
        {"type": "function", "function": {"name": "time", "parameters": NO_PARAMETERS}},
    ]
    assert chat(tools=TOOLS).params(16).grammar is None


def test_none_leaves_the_tools_out_of_the_prompt() -> None:
    p = plan(tool_choice="none")
    assert (p.mode, p.tools_json(), p.grammar) == ("none", "", None)


def test_a_named_function_constrains_the_output_to_its_parameters() -> None:
    p = plan(tool_choice={"type": "function", "function": {"name": "weather"}})
    assert (p.mode, p.allowed) == ("named", ("weather",))
    assert schema_of(p) == WEATHER
    assert p.tools_json()  # the model sees every tool
    req = chat(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "weather"}})
    assert req.params(16).grammar == p.grammar
    no_args = plan(tool_choice={"type": "function", "function": {"name": "time"}})
    assert schema_of(no_args) == NO_PARAMETERS


def _call_schema(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"name": {"const": name}, "arguments": arguments},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def test_required_constrains_to_an_array_of_calls_of_the_tools() -> None:
    schema = schema_of(plan(tool_choice="required"))
    assert schema == {
        "type": "array",
        "minItems": 1,
        "items": {"anyOf": [_call_schema("weather", WEATHER), _call_schema("time", NO_PARAMETERS)]},
    }
    one = schema_of(plan(tool_choice="required", parallel_tool_calls=False))
    assert (one["minItems"], one["maxItems"]) == (1, 1)


def test_allowed_tools_limit_the_calls_but_not_what_the_model_sees() -> None:
    allowed: dict[str, Any] = {
        "mode": "required",
        "tools": [{"type": "function", "function": {"name": "time"}}],
    }
    choice = {"type": "allowed_tools", "allowed_tools": allowed}
    p = plan(tool_choice=choice)
    assert (p.mode, p.allowed, len(json.loads(p.tools_json()))) == ("required", ("time",), 2)
    assert schema_of(p)["items"] == _call_schema("time", NO_PARAMETERS)
    auto = plan(tool_choice={**choice, "allowed_tools": {**allowed, "mode": "auto"}})
    assert (auto.mode, auto.allowed, auto.grammar) == ("auto", ("time",), None)


def test_required_hoists_the_tools_definitions_to_the_root() -> None:
    city = {"type": "string", "maxLength": 20}
    params = {"type": "object", "properties": {"city": {"$ref": "#/$defs/City"}}}
    tools = [
        {
            "type": "function",
            "function": {"name": "a", "parameters": {**params, "$defs": {"City": city}}},
        },
        {
            "type": "function",
            "function": {"name": "b", "parameters": {**params, "$defs": {"City": city}}},
        },
    ]
    schema = schema_of(chat(tools=tools, tool_choice="required").tool_plan)
    assert schema["$defs"] == {"City": city}
    assert schema["items"]["anyOf"][0]["properties"]["arguments"] == params
    other = {**tools[1], "function": {"name": "b", "parameters": {**params, "$defs": {"City": {}}}}}
    message = refused("tools", tools=[tools[0], other], tool_choice="required")
    assert "$defs/City" in message


@pytest.mark.parametrize(
    ("fields", "param", "match"),
    [
        ({"tool_choice": "required"}, "tool_choice", "need tools"),
        ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice", ""),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
            "no tool is named 'nope'",
        ),
        (
            {"tools": TOOLS, "tool_choice": {"type": "custom", "custom": {"name": "x"}}},
            "tool_choice.type",
            'only "function"',
        ),
        ({"tools": [TOOLS[0], TOOLS[0]]}, "tools", "unique"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools.0.type", "only"),
        (
            {"tools": [{"type": "function", "function": {"name": "a b"}}]},
            "tools.0.function.name",
            "",
        ),
        (
            {"tools": TOOLS, "response_format": {"type": "json_object"}},
            "response_format",
            "tool_choice",
        ),
    ],
)
def test_tool_fields_that_do_not_fit_are_400_naming_the_field(
    fields: dict[str, Any], param: str, match: str
) -> None:
    assert match in refused(param, **fields)


def test_response_format_goes_with_tools_that_are_not_auto() -> None:
    fmt = {"type": "json_object"}
    assert chat(tools=TOOLS, tool_choice="none", response_format=fmt).params(16).grammar is not None
    named = {"type": "function", "function": {"name": "weather"}}
    req = chat(tools=TOOLS, tool_choice=named, response_format=fmt)
    assert req.params(16).grammar == req.tool_plan.grammar  # the call is the answer


# --- the output as tool calls ---------------------------------------------------------------


def test_named_output_is_the_arguments_of_the_one_call() -> None:
    p = plan(tool_choice={"type": "function", "function": {"name": "weather"}})
    assert parse_output(p, '{"city": "Paris"}') == ToolAnswer(
        None, (ParsedCall("weather", '{"city": "Paris"}'),)
    )


def test_required_output_is_an_array_of_calls() -> None:
    p = plan(tool_choice="required")
    text = '[{"name": "weather", "arguments": {"city": "Nice"}}, {"name": "time", "arguments": {}}]'
    assert parse_output(p, text) == ToolAnswer(
        None, (ParsedCall("weather", '{"city": "Nice"}'), ParsedCall("time", "{}"))
    )
    one = plan(tool_choice="required", parallel_tool_calls=False)
    assert parse_output(one, text).calls == (ParsedCall("weather", '{"city": "Nice"}'),)
    cut = '[{"name": "weather", "arguments": {"ci'  # max_tokens reached: no call made up
    assert parse_output(p, cut) == ToolAnswer(cut)


def test_auto_output_calls_in_hermes_blocks() -> None:
    p = plan()
    text = (
        "Let me check.\n<tool_call>\n"
        '{"name": "weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>{"name": "time", "arguments": "{}"}'  # unclosed at the end; string arguments
    )
    assert parse_output(p, text) == ToolAnswer(
        "Let me check.", (ParsedCall("weather", '{"city": "Paris"}'), ParsedCall("time", "{}"))
    )
    bare = '<tool_call>{"name": "time"}</tool_call>'
    assert parse_output(p, bare) == ToolAnswer(None, (ParsedCall("time", "{}"),))
    single = plan(parallel_tool_calls=False)
    assert len(parse_output(single, text).calls) == 1
    assert parse_output(p, "Just text.") == ToolAnswer("Just text.")


@pytest.mark.parametrize(
    "text",
    [
        "<tool_call>{not json}</tool_call>",
        '<tool_call>{"name": "unknown", "arguments": {}}</tool_call>',
        '<tool_call>{"arguments": {}}</tool_call>',
        '<tool_call>{"name": "time", "arguments": [1]}</tool_call>',
        '<tool_call>{"name": "time", "arguments": {}}</tool_call><tool_call>{"name": ',
    ],
)
def test_malformed_auto_calls_stay_plain_content(text: str) -> None:
    assert parse_output(plan(), text) == ToolAnswer(text)


def test_auto_calls_only_of_allowed_tools() -> None:
    choice = {
        "type": "allowed_tools",
        "allowed_tools": {
            "mode": "auto",
            "tools": [{"type": "function", "function": {"name": "time"}}],
        },
    }
    text = '<tool_call>{"name": "weather", "arguments": {"city": "Paris"}}</tool_call>'
    assert parse_output(plan(tool_choice=choice), text) == ToolAnswer(text)
