"""OpenAI tool calling: the ``tools`` and ``tool_choice`` of a chat request, and the plan they
make (`ToolPlan`): which tools the chat template renders, and how the output is constrained.

- ``"none"`` (the default without tools): the tools are left out of the prompt and the model
  answers as if there were none (so a model whose template ignores tools can still take them).
- a named function (``{"type": "function", "function": {"name": ...}}``): the output is
  constrained to that function's ``parameters`` schema: it is the call's arguments.
- ``"required"``: constrained to a JSON array (one item at most without
  ``parallel_tool_calls``) of ``{"name": <a tool>, "arguments": <its parameters>}``, as vLLM does.
- ``"auto"`` (the default with tools): unconstrained; calls the model writes in the Hermes
  format (``<tool_call>{json}</tool_call>``, Qwen2.5's and the demo model's) are parsed out of
  the text (`tool_output`). Their arguments are not constrained, ``strict`` or not.

``allowed_tools`` limits the calls to some of the tools (all of which are rendered) in the
``auto`` or ``required`` way. How the output becomes tool calls is `tool_output`'s part.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, model_validator

from libs.protocol.messages import GrammarSpec

from .openai_fields import RequestPart, refuse, screen

ToolMode = Literal["none", "auto", "required", "named"]

# As OpenAI: a-z, A-Z, 0-9, underscores and dashes, at most 64.
FUNCTION_NAME = r"^[A-Za-z0-9_-]{1,64}$"
MAX_TOOLS = 128  # OpenAI's limit per request
# What a function without ``parameters`` takes: no arguments at all.
NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}
# Schema keywords whose sub-schemas ``$ref`` points at from the root ("#/$defs/...").
DEFINITIONS = ("$defs", "definitions")


class FunctionTyped(RequestPart):
    """A part with a ``type`` of which sllm supports only ``function``: any other type (a
    custom tool, a custom tool call...) is refused for what it is, not for its fields."""

    @model_validator(mode="before")
    @classmethod
    def _screen(cls, data: object) -> object:
        kind = data.get("type") if isinstance(data, dict) else None
        if isinstance(data, dict) and kind != "function":
            refuse(cls, "type", kind, f'only "function" is supported, got {kind!r}')
        return screen(cls, cls.FIELDS, data, cls.IGNORED, cls.REFUSED)


class FunctionIn(RequestPart):
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    # Named and required calls are always constrained to the schema; auto ones never are.
    strict: bool | None = None

    def arguments_schema(self) -> dict[str, Any]:
        return NO_PARAMETERS if self.parameters is None else self.parameters

    def template_entry(self) -> dict[str, Any]:
        """The tool as chat templates take it (``strict`` means nothing to the model)."""
        function: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            function["description"] = self.description
        function["parameters"] = self.arguments_schema()
        return {"type": "function", "function": function}


class ToolIn(FunctionTyped):
    type: Literal["function"]
    function: FunctionIn


class FunctionName(RequestPart):
    name: str = Field(min_length=1, max_length=64)


class NamedToolChoice(FunctionTyped):
    type: Literal["function"]
    function: FunctionName


class AllowedTools(RequestPart):
    mode: Literal["auto", "required"]
    tools: list[NamedToolChoice] = Field(min_length=1, max_length=MAX_TOOLS)


class AllowedToolsChoice(RequestPart):
    type: Literal["allowed_tools"]
    allowed_tools: AllowedTools


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice | AllowedToolsChoice


def tool_choice_model(value: object) -> object:
    """A ``tool_choice`` object as its model (chosen by its ``type``, so that a 400 names the
    field at fault rather than every member of the union); strings pass as they are."""
    if value is None or value in ("none", "auto", "required"):
        return value
    if not isinstance(value, dict):
        raise ValueError(
            'must be "none", "auto", "required", or a function to call '
            f'({{"type": "function", "function": {{"name": ...}}}}), got {value!r}'
        )
    if value.get("type") == "allowed_tools":
        return AllowedToolsChoice.model_validate(value)
    return NamedToolChoice.model_validate(value)


class ToolPlanError(ValueError):
    """Tool fields that do not fit together; ``param`` is the field at fault."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class ToolPlan:
    """What a chat request's tools make of its generation: the functions the template renders,
    the mode, the names the model may call, whether it may call several at once, and the
    output's constraint (named, required)."""

    mode: ToolMode = "none"
    functions: tuple[FunctionIn, ...] = ()
    allowed: tuple[str, ...] = ()
    parallel: bool = True
    grammar: GrammarSpec | None = None

    def tools_json(self) -> str:
        """The tools for the chat template (``GenerateRequest.tools_json``); with ``none``,
        empty: they are not rendered."""
        if self.mode == "none":
            return ""
        return json.dumps([f.template_entry() for f in self.functions], ensure_ascii=False)


NO_TOOLS = ToolPlan()


def tool_plan(
    tools: list[ToolIn] | None, choice: ToolChoice | None, parallel: bool | None
) -> ToolPlan:
    """The plan of a request's tool fields.

    Raises:
        ToolPlanError: two tools with one name; a ``tool_choice`` that names no declared tool,
            or needs tools and has none; ``required`` over tools whose ``$defs`` give one name
            different schemas.
    """
    functions = {t.function.name: t.function for t in tools or ()}
    if len(functions) != len(tools or ()):
        names = [t.function.name for t in tools or ()]
        raise ToolPlanError("tools", f"function names must be unique, got {names}")
    mode: ToolMode
    allowed: tuple[str, ...]
    if isinstance(choice, NamedToolChoice):
        mode, allowed = "named", (choice.function.name,)
    elif isinstance(choice, AllowedToolsChoice):
        mode = choice.allowed_tools.mode
        allowed = tuple(dict.fromkeys(t.function.name for t in choice.allowed_tools.tools))
    else:
        mode = choice or "auto"
        allowed = tuple(functions)
    if not functions:
        if mode in ("none", "auto"):
            return NO_TOOLS  # OpenAI's meaning of both without tools
        raise ToolPlanError("tool_choice", f"{mode} tool calls need tools, and none are given")
    for name in allowed:
        if name not in functions:
            raise ToolPlanError("tool_choice", f"no tool is named {name!r}")
    parallel_calls = parallel is not False
    grammar = None
    if mode == "named":
        grammar = _json_schema(functions[allowed[0]].arguments_schema())
    elif mode == "required":
        grammar = _json_schema(_calls_schema([functions[n] for n in allowed], parallel_calls))
    return ToolPlan(mode, tuple(functions.values()), allowed, parallel_calls, grammar)


def _calls_schema(functions: list[FunctionIn], parallel: bool) -> dict[str, Any]:
    """A JSON array of calls ``{"name", "arguments"}`` of ``functions`` (one at most unless
    ``parallel``), their definitions hoisted to the root."""
    hoisted: dict[str, dict[str, Any]] = {}
    calls = [
        {
            "type": "object",
            "properties": {
                "name": {"const": f.name},
                "arguments": _hoist_definitions(f.arguments_schema(), hoisted),
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for f in functions
    ]
    schema: dict[str, Any] = {
        "type": "array",
        "minItems": 1,
        "items": calls[0] if len(calls) == 1 else {"anyOf": calls},
    }
    if not parallel:
        schema["maxItems"] = 1
    schema.update({key: defs for key, defs in hoisted.items() if defs})
    return schema


def _json_schema(schema: dict[str, Any]) -> GrammarSpec:
    return GrammarSpec(kind="json_schema", json_schema=json.dumps(schema))


def _hoist_definitions(
    schema: dict[str, Any], hoisted: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """``schema`` without its ``$defs`` (``definitions``), which go into ``hoisted``: nested in
    the array of calls, its ``"#/$defs/..."`` references resolve from the new root.

    Raises:
        ToolPlanError: a definition of the same name is already there with another schema.
    """
    if not any(key in schema for key in DEFINITIONS):
        return schema
    rest = dict(schema)
    for key in DEFINITIONS:
        into = hoisted.setdefault(key, {})
        for name, definition in (rest.pop(key, None) or {}).items():
            if into.setdefault(name, definition) != definition:
                raise ToolPlanError(
                    "tools",
                    f"two tools define {key}/{name} differently; "
                    '"required" tool calls need one definition per name',
                )
    return rest
