"""Which fields of OpenAI's request bodies sllm honours, accepts and ignores, or refuses.

Nothing is silently dropped if it could change the answer. A request model (a `RequestPart`)
declares the fields it honours; before pydantic validates them, `screen` goes over the raw body
and drops the fields of an ``IGNORED`` set (they cannot change the answer), accepts a field of a
``REFUSED`` table only with a value that changes nothing (``n: 1``, ``functions: []``...), and
refuses everything else, unknown fields included (a newer client's field could change the answer
too), with a 400 naming the field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, NoReturn

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

UNKNOWN = "unknown field: sllm refuses the fields it does not know rather than ignore them"
LEGACY_FUNCTIONS = "the deprecated function calling is not supported: use tools and tool_choice"


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
    }
)
STREAM_OPTIONS_IGNORED = frozenset({"include_obfuscation"})  # padding of chunks, not content
CONTENT_PART_IGNORED = frozenset({"prompt_cache_breakpoint"})


CHAT_REFUSED: Mapping[str, Refused] = {
    "functions": Refused(LEGACY_FUNCTIONS, (None, [])),
    "function_call": Refused(
        f'{LEGACY_FUNCTIONS}: function_call may only be "none" or "auto"', (None, "none", "auto")
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
    "best_of": Refused("best_of must be 1 (sllm generates one completion per request)", (None, 1)),
    "echo": Refused("echo is not supported yet", (None, False)),
    "suffix": Refused("suffix (insertion) is not supported yet", (None, "")),
}

# A chat message's fields beyond role, content and the tool-call history: names, audio...
MESSAGE_REFUSED: Mapping[str, Refused] = {
    "function_call": Refused(f"{LEGACY_FUNCTIONS}: send tool_calls in the history"),
    "name": Refused("message names are not supported yet", (None, "")),
    "refusal": Refused("refusals in the history are not supported yet"),
    "audio": Refused("audio in the history is not supported"),
}


def document_screen(schema: dict[str, Any], model: type[Any]) -> None:
    """The JSON schema of a `RequestPart` says what `screen` accepts: its ``IGNORED`` fields
    (any value) and its ``REFUSED`` ones (a neutral value only), beside the fields it honours."""
    properties = schema.setdefault("properties", {})
    for name in sorted(model.IGNORED):
        properties.setdefault(name, {"description": "Accepted and ignored."})
    for name, rule in model.REFUSED.items():
        properties.setdefault(
            name, {"enum": list(rule.neutral), "description": f"Not supported: {rule.reason}."}
        )


class RequestPart(BaseModel):
    """A request body, or a part of one, whose fields are screened: it declares the fields it
    honours (``FIELDS``); ``IGNORED`` ones are dropped, ``REFUSED`` ones accepted only with a
    neutral value, and any other is a 400 naming it."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=document_screen)
    IGNORED: ClassVar[frozenset[str]] = frozenset()
    REFUSED: ClassVar[Mapping[str, Refused]] = {}
    FIELDS: ClassVar[frozenset[str]] = frozenset()  # the fields it declares (honours)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        cls.FIELDS = frozenset(f.alias or name for name, f in cls.model_fields.items())

    @model_validator(mode="before")
    @classmethod
    def _screen(cls, data: object) -> object:
        return screen(cls, cls.FIELDS, data, cls.IGNORED, cls.REFUSED)


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


def refuse(model: type[BaseModel], field: str, value: object, message: str) -> NoReturn:
    """Raise the `ValidationError` of a 400 naming ``field`` (inside a validator, pydantic puts
    the path of the part in front)."""
    raise ValidationError.from_exception_data(model.__name__, [field_error(field, value, message)])


def _with_value(reason: str, value: object) -> str:
    shown = json.dumps(value, ensure_ascii=False)
    return f"{reason}, got {shown}" if len(shown) <= 40 else reason
