"""Which fields of OpenAI's request bodies sllm honours, accepts and ignores, or refuses.

Nothing is silently dropped if it could change the answer. A request model declares the fields
it honours; before pydantic validates them, `screen` goes over the raw body and drops the fields
of an ``IGNORED`` set (they cannot change the answer), accepts a field of a ``REFUSED`` table
only with a value that changes nothing (``n: 1``, ``tools: []``...), and refuses everything
else, unknown fields included (a newer client's field could change the answer too), with a 400
naming the field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

UNKNOWN = "unknown field: sllm refuses the fields it does not know rather than ignore them"
NO_TOOLS = "tool calling is not supported yet"


@dataclass(frozen=True)
class Refused:
    """A field sllm does not implement: accepted only with one of the ``neutral`` values."""

    reason: str
    neutral: tuple[object, ...] = (None,)

    def allows(self, value: object) -> bool:
        return any(value == n and type(value) is type(n) for n in self.neutral)


# Fields that cannot change the answer: accepted and dropped (request bodies).
REQUEST_IGNORED = frozenset(
    {
        "user",
        "safety_identifier",
        "metadata",
        "store",
        "service_tier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "prompt_cache_options",
        # A speculative-decoding hint: the answer is the same with or without it.
        "prediction",
        # Only meaningful with tools, which are refused.
        "parallel_tool_calls",
    }
)
STREAM_OPTIONS_IGNORED = frozenset({"include_obfuscation"})  # padding of chunks, not content
CONTENT_PART_IGNORED = frozenset({"prompt_cache_breakpoint"})

_ONE_CHOICE = Refused("n must be 1 (sllm returns one choice per request)", (None, 1))

CHAT_REFUSED: Mapping[str, Refused] = {
    "n": _ONE_CHOICE,
    "tools": Refused(NO_TOOLS, (None, [])),
    "tool_choice": Refused(
        f'{NO_TOOLS}: tool_choice may only be "none" or "auto"', (None, "none", "auto")
    ),
    "functions": Refused(NO_TOOLS, (None, [])),
    "function_call": Refused(
        f'{NO_TOOLS}: function_call may only be "none" or "auto"', (None, "none", "auto")
    ),
    "audio": Refused("audio output is not supported"),
    "modalities": Refused(
        'only text output is supported: modalities may only be ["text"]', (None, ["text"])
    ),
    "reasoning_effort": Refused("reasoning_effort is not supported"),
    "verbosity": Refused("verbosity is not supported"),
    "web_search_options": Refused("web search is not supported"),
    "moderation": Refused("moderation is not supported"),
}

COMPLETION_REFUSED: Mapping[str, Refused] = {
    "n": _ONE_CHOICE,
    "best_of": Refused("best_of must be 1 (sllm generates one completion per request)", (None, 1)),
    "echo": Refused("echo is not supported yet", (None, False)),
    "suffix": Refused("suffix (insertion) is not supported yet", (None, "")),
}

# A chat message's fields beyond role and content: tool-call history, names, audio.
MESSAGE_REFUSED: Mapping[str, Refused] = {
    "tool_calls": Refused(f"{NO_TOOLS}: tool calls in the history are refused", (None, [])),
    "function_call": Refused(f"{NO_TOOLS}: function calls in the history are refused"),
    "tool_call_id": Refused(f"{NO_TOOLS}: tool results in the history are refused"),
    "name": Refused("message names are not supported yet", (None, "")),
    "refusal": Refused("refusals in the history are not supported yet"),
    "audio": Refused("audio in the history is not supported"),
}


def screen(
    model: type[BaseModel],
    names: frozenset[str],
    data: object,
    ignored: frozenset[str],
    refused: Mapping[str, Refused],
) -> object:
    """``data`` (a raw body or part of one) less the fields that ``model`` does not declare
    (``names``), which are dropped when ignored or neutral; any other is a `ValidationError`
    naming the field."""
    if not isinstance(data, dict) or data.keys() <= names:
        return data  # the common case: nothing to screen
    kept: dict[str, Any] = {}
    errors: list[InitErrorDetails] = []
    for key, value in data.items():
        if key in names:
            kept[key] = value
        elif key in ignored:
            continue
        elif (rule := refused.get(key)) is None:
            errors.append(field_error(key, value, UNKNOWN))
        elif not rule.allows(value):
            errors.append(field_error(key, value, _with_value(rule.reason, value)))
    if errors:
        raise ValidationError.from_exception_data(model.__name__, errors)
    return kept


def field_error(field: str, value: object, message: str) -> InitErrorDetails:
    """A validation error located at ``field`` (so the 400 names it)."""
    return InitErrorDetails(
        type=PydanticCustomError("unsupported", "{reason}", {"reason": message}),
        loc=(field,),
        input=value,
    )


def _with_value(reason: str, value: object) -> str:
    shown = json.dumps(value, ensure_ascii=False)
    return f"{reason}, got {shown}" if len(shown) <= 40 else reason
