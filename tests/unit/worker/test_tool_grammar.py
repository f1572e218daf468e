"""The grammars the router makes of tool_choice compile in the worker and hold the output to
calls of the declared tools."""

from __future__ import annotations

import json
from typing import Any

import pytest

from libs.demo.vocab import EOS_TOKEN_ID, TOKENIZER_VOCAB_SIZE
from services.router.api_schema import ChatCompletionRequest
from services.worker.grammar import Grammar, GrammarCompiler, GrammarError

pytestmark = pytest.mark.unit

CITY = {"type": "string", "maxLength": 12}
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"$ref": "#/$defs/City"}},
                "required": ["city"],
                "additionalProperties": False,
                "$defs": {"City": CITY},
            },
        },
    },
    {"type": "function", "function": {"name": "time"}},
]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from libs.demo import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="module")
def compiler(tokenizer: Any) -> GrammarCompiler:
    return GrammarCompiler(tokenizer, TOKENIZER_VOCAB_SIZE, frozenset({EOS_TOKEN_ID}))


def grammar(compiler: GrammarCompiler, **fields: Any) -> Grammar:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": TOOLS}
    spec = ChatCompletionRequest.model_validate({**body, **fields}).params(64).grammar
    assert spec is not None
    return compiler.compile(spec.kind, spec.json_schema)


def accepts(tokenizer: Any, g: Grammar, text: str) -> bool:
    """Whether ``text`` is a whole output under ``g``."""
    matcher = g.matcher()
    try:
        for token in tokenizer.encode(text, add_special_tokens=False):
            matcher.accept(token)
        matcher.accept(EOS_TOKEN_ID)
    except GrammarError:
        return False
    return matcher.finished


def test_a_named_function_takes_its_arguments_only(
    compiler: GrammarCompiler, tokenizer: Any
) -> None:
    g = grammar(compiler, tool_choice={"type": "function", "function": {"name": "weather"}})
    assert accepts(tokenizer, g, '{"city": "Paris"}')
    assert not accepts(tokenizer, g, '{"town": "Paris"}')
    assert not accepts(tokenizer, g, '{"city": "' + "x" * 13 + '"}')  # through $defs
    none = grammar(compiler, tool_choice={"type": "function", "function": {"name": "time"}})
    assert accepts(tokenizer, none, "{}")
    assert not accepts(tokenizer, none, '{"a": 1}')


def test_required_takes_an_array_of_calls_of_the_tools(
    compiler: GrammarCompiler, tokenizer: Any
) -> None:
    g = grammar(compiler, tool_choice="required")
    two = [{"name": "weather", "arguments": {"city": "Nice"}}, {"name": "time", "arguments": {}}]
    assert accepts(tokenizer, g, json.dumps(two))
    assert not accepts(tokenizer, g, "[]")
    assert not accepts(tokenizer, g, '[{"name": "other", "arguments": {}}]')
    assert not accepts(tokenizer, g, '[{"name": "weather", "arguments": {"city": 3}}]')
    one = grammar(compiler, tool_choice="required", parallel_tool_calls=False)
    assert accepts(tokenizer, one, json.dumps(two[:1]))
    assert not accepts(tokenizer, one, json.dumps(two))
