"""The model's output as tool calls, by the request's `ToolPlan`: the arguments of the named
function, the JSON array of ``required``, or the Hermes blocks (``<tool_call>{"name": ...,
"arguments": ...}</tool_call>``) of ``auto``. Output that does not parse (cut by max_tokens, or
malformed calls in ``auto``) stays plain content: a call is never half made up.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from .tool_calls import ToolPlan

# A closed block, or an unclosed one at the very end (the model stopped right after the JSON).
HERMES_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>|<tool_call>(.*)\Z", re.DOTALL)


@dataclass(frozen=True)
class ParsedCall:
    name: str
    arguments: str  # JSON text, as OpenAI carries it


@dataclass(frozen=True)
class ToolAnswer:
    """An answer's content (None: none) and the calls it makes (none: a plain answer)."""

    content: str | None
    calls: tuple[ParsedCall, ...] = ()


def parse_output(plan: ToolPlan, text: str) -> ToolAnswer:
    """The answer ``text`` makes under ``plan``."""
    if plan.mode == "named":
        # Constrained to the arguments; cut short (length), they are still what there is.
        return ToolAnswer(None, (ParsedCall(plan.allowed[0], text.strip()),))
    if plan.mode == "required":
        calls = _required_calls(plan, text)
        return ToolAnswer(None, calls) if calls else ToolAnswer(text)
    if plan.mode == "auto":
        calls, rest = _hermes_calls(plan, text)
        return ToolAnswer(rest.strip() or None, calls) if calls else ToolAnswer(text)
    return ToolAnswer(text)


def _required_calls(plan: ToolPlan, text: str) -> tuple[ParsedCall, ...]:
    try:
        items = json.loads(text)
    except ValueError:
        return ()
    if not isinstance(items, list):
        return ()
    calls = [_call(plan, item) for item in items]
    return _limited(plan, calls) if all(calls) else ()


def _hermes_calls(plan: ToolPlan, text: str) -> tuple[tuple[ParsedCall, ...], str]:
    """The calls of the Hermes blocks in ``text`` and the text around them; no calls when a
    block is not a call of an allowed tool."""
    blocks = list(HERMES_BLOCK.finditer(text))
    if not blocks:
        return (), text
    calls = []
    for block in blocks:
        try:
            item = json.loads(block.group(1) if block.group(1) is not None else block.group(2))
        except ValueError:
            return (), text
        calls.append(_call(plan, item))
    if not all(calls):
        return (), text
    return _limited(plan, calls), HERMES_BLOCK.sub("", text)


def _call(plan: ToolPlan, item: Any) -> ParsedCall | None:
    """``{"name": ..., "arguments": {...}}`` as a call of an allowed tool, else None. Arguments
    written as a JSON string of an object are taken too (some models do)."""
    if not isinstance(item, dict) or item.get("name") not in plan.allowed:
        return None
    arguments = item.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ParsedCall(item["name"], json.dumps(arguments, ensure_ascii=False))


def _limited(plan: ToolPlan, calls: list[ParsedCall | None]) -> tuple[ParsedCall, ...]:
    """Without ``parallel_tool_calls``, the first call only."""
    kept = [c for c in calls if c is not None]
    return tuple(kept if plan.parallel else kept[:1])
