"""Constrained decoding: a random tiny model decoding under a grammar always yields valid JSON."""

from __future__ import annotations

import dataclasses
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch

from libs.demo.vocab import EOS_TOKEN_ID, TOKENIZER_VOCAB_SIZE
from services.worker.grammar import Grammar, GrammarCompiler, GrammarError, Matcher, fill_masks

pytestmark = pytest.mark.unit

# The model has 64 more rows than the tokenizer has tokens, as padded vocabularies do.
MODEL_VOCAB = TOKENIZER_VOCAB_SIZE + 64
EOS = frozenset({EOS_TOKEN_ID})

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
    },
    "required": ["name", "age", "color", "tags"],
    "additionalProperties": False,
}


def conforms(value: Any) -> bool:
    """``value`` satisfies SCHEMA (written out: jsonschema is not a dependency)."""
    return (
        isinstance(value, dict)
        and set(value) == {"name", "age", "color", "tags"}
        and isinstance(value["name"], str)
        and len(value["name"]) <= 20
        and type(value["age"]) is int
        and 0 <= value["age"] <= 150
        and value["color"] in ("red", "green", "blue")
        and isinstance(value["tags"], list)
        and len(value["tags"]) <= 3
        and all(isinstance(t, str) and len(t) <= 8 for t in value["tags"])
    )


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from libs.demo import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="module")
def model() -> Any:
    from transformers import AutoModelForCausalLM

    from libs.demo import DEMO_SIZES, demo_config

    size = dataclasses.replace(DEMO_SIZES["tiny"], vocab_size=MODEL_VOCAB)
    torch.manual_seed(0)
    # transformers' constructors carry no annotations.
    return AutoModelForCausalLM.from_config(demo_config(size)).eval()  # type: ignore[no-untyped-call]


@pytest.fixture
def compiler(tokenizer: Any) -> GrammarCompiler:
    return GrammarCompiler(tokenizer, MODEL_VOCAB, EOS)


@pytest.fixture(scope="module")
def prompt(tokenizer: Any) -> list[int]:
    messages = [{"role": "user", "content": "Describe a person as JSON."}]
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(encoded["input_ids"])


def decode(
    model: Any,
    tokenizer: Any,
    prompt: list[int],
    grammar: Grammar,
    seed: int | None = None,
    budget: int = 400,
) -> str:
    """Decode under ``grammar`` until it is finished (greedy, or sampled with ``seed``)."""
    matcher = grammar.matcher()
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    ids, out = list(prompt), []
    with torch.no_grad():
        for _ in range(budget):
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].clone()
            logits[TOKENIZER_VOCAB_SIZE:] += 100.0  # unmasked, a padding row would always win
            logits[~matcher.allowed_mask()] = float("-inf")
            if generator is None:
                token = int(logits.argmax())
            else:
                probs = torch.softmax(logits, dim=-1)
                token = int(torch.multinomial(probs, 1, generator=generator))
            matcher.accept(token)
            assert token < TOKENIZER_VOCAB_SIZE
            if token in EOS:
                break
            ids.append(token)
            out.append(token)
            if matcher.finished:
                break
    assert matcher.finished, f"not finished after {budget} tokens: {tokenizer.decode(out)!r}"
    return str(tokenizer.decode(out))


def test_greedy_decoding_under_a_schema_yields_conforming_json(
    model: Any, tokenizer: Any, prompt: list[int], compiler: GrammarCompiler
) -> None:
    grammar = compiler.compile("json_schema", json.dumps(SCHEMA))
    text = decode(model, tokenizer, prompt, grammar)
    assert conforms(json.loads(text)), text


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampled_decoding_under_a_schema_yields_conforming_json(
    model: Any, tokenizer: Any, prompt: list[int], compiler: GrammarCompiler, seed: int
) -> None:
    grammar = compiler.compile("json_schema", json.dumps(SCHEMA))
    text = decode(model, tokenizer, prompt, grammar, seed=seed)
    assert conforms(json.loads(text)), text


@pytest.mark.parametrize("seed", [None, 0])
def test_json_object_output_parses_to_a_dict(
    model: Any, tokenizer: Any, prompt: list[int], compiler: GrammarCompiler, seed: int | None
) -> None:
    text = decode(model, tokenizer, prompt, compiler.compile("json_object"), seed=seed)
    assert isinstance(json.loads(text), dict), text


@pytest.mark.parametrize(
    ("kind", "schema", "message"),
    [
        ("json_schema", "", "needs a schema"),
        ("json_schema", '{"type": "object",', "not valid JSON"),
        ("json_schema", "[1, 2]", "must be a JSON object"),
        ("json_schema", '{"type": "strin"}', "Invalid type: strin"),
        ("json_schema", '{"$ref": "#/$defs/missing"}', "/$defs/missing"),
        ("json_schema", '{"not": {"type": "string"}}', "Unimplemented keys"),
        ("json_schema", '{"type": "string", "pattern": "(("}', "unclosed group"),
        ("json_schema", '{"type": "integer", "minimum": 5, "maximum": 2}', "minimum (5)"),
        ("json_schema", '{"type": "string", "minLength": 3, "maxLength": 1}', "minLength (3)"),
        ("yaml", "", "unknown response format type 'yaml'"),
    ],
)
def test_invalid_response_format_raises_grammar_error_naming_the_problem(
    compiler: GrammarCompiler, kind: Any, schema: str, message: str
) -> None:
    with pytest.raises(GrammarError) as caught:
        compiler.compile(kind, schema)
    assert message in str(caught.value)


def test_allowed_mask_excludes_padded_rows_and_special_tokens(
    compiler: GrammarCompiler, tokenizer: Any
) -> None:
    mask = compiler.compile("json_object").matcher().allowed_mask()
    assert mask.dtype == torch.bool
    assert mask.shape == (MODEL_VOCAB,)
    assert not mask[TOKENIZER_VOCAB_SIZE:].any()
    assert not mask[list(tokenizer.all_special_ids)].any()
    allowed = [tokenizer.decode([int(i)]) for i in mask.nonzero().flatten()]
    assert allowed
    assert all(text.lstrip().startswith("{") for text in allowed)


def test_accept_of_a_disallowed_token_raises(compiler: GrammarCompiler, tokenizer: Any) -> None:
    matcher = compiler.compile("json_object").matcher()
    (letter,) = tokenizer.encode("x")
    assert not matcher.allowed_mask()[letter]
    with pytest.raises(GrammarError, match=f"token {letter} is not allowed"):
        matcher.accept(letter)
    fresh = compiler.compile("json_object").matcher()
    with pytest.raises(GrammarError, match="not allowed"):
        fresh.accept(TOKENIZER_VOCAB_SIZE + 3)  # a padding row
    with pytest.raises(GrammarError, match="outside the vocabulary"):
        fresh.accept(MODEL_VOCAB)


def feed(matcher: Matcher, tokenizer: Any, text: str) -> None:
    for token in tokenizer.encode(text):
        matcher.accept(token)


def test_a_complete_object_finishes_and_then_allows_only_eos(
    compiler: GrammarCompiler, tokenizer: Any
) -> None:
    matcher = compiler.compile("json_object").matcher()
    feed(matcher, tokenizer, '{"a": [1, 2.5, "x"], "b": {"c": null}')
    assert not matcher.finished
    feed(matcher, tokenizer, "}")
    assert matcher.finished
    assert matcher.allowed_mask().nonzero().flatten().tolist() == [EOS_TOKEN_ID]
    matcher.accept(EOS_TOKEN_ID)
    assert matcher.finished


def test_a_scalar_root_may_go_on_until_eos(compiler: GrammarCompiler, tokenizer: Any) -> None:
    matcher = compiler.compile("json_schema", '{"type": "integer"}').matcher()
    feed(matcher, tokenizer, "12")
    mask = matcher.allowed_mask()
    assert not matcher.finished
    assert mask[EOS_TOKEN_ID]
    assert mask[tokenizer.encode("3")[0]]
    matcher.accept(EOS_TOKEN_ID)
    assert matcher.finished


def test_whitespace_between_tokens_is_bounded(compiler: GrammarCompiler, tokenizer: Any) -> None:
    matcher = compiler.compile("json_object").matcher()
    feed(matcher, tokenizer, "{\n" + " " * 16)
    mask = matcher.allowed_mask()
    allowed = [tokenizer.decode([int(i)]) for i in mask.nonzero().flatten()]
    assert allowed
    assert not [text for text in allowed if text.isspace()]  # no more whitespace here
    with pytest.raises(GrammarError):
        matcher.accept(tokenizer.encode(" ")[0])


def test_the_callers_x_guidance_cannot_unbound_whitespace(
    compiler: GrammarCompiler, tokenizer: Any
) -> None:
    schema = {"type": "object", "x-guidance": {"whitespace_pattern": "[ ]*"}}
    matcher = compiler.compile("json_schema", json.dumps(schema)).matcher()
    feed(matcher, tokenizer, "{" + " " * 16)
    with pytest.raises(GrammarError):
        matcher.accept(tokenizer.encode(" ")[0])


def test_same_schema_compiles_once(compiler: GrammarCompiler) -> None:
    first = compiler.compile("json_schema", json.dumps(SCHEMA))
    again = compiler.compile("json_schema", json.dumps(SCHEMA, indent=2))  # same schema, respaced
    assert again is first
    assert (compiler.misses, compiler.hits) == (1, 1)
    other = compiler.compile("json_schema", '{"type": "integer"}')
    assert other is not first
    assert compiler.misses == 2


def test_compiling_off_the_decoding_thread_works(compiler: GrammarCompiler, tokenizer: Any) -> None:
    with ThreadPoolExecutor(1) as pool:
        grammar = pool.submit(compiler.compile, "json_schema", json.dumps(SCHEMA)).result()
    matcher = grammar.matcher()
    feed(matcher, tokenizer, '{"name": "Ada", "age": 36, "color": "blue", "tags": []}')
    assert matcher.finished


def test_matchers_of_one_grammar_are_independent(compiler: GrammarCompiler, tokenizer: Any) -> None:
    grammar = compiler.compile("json_object")
    advanced, fresh = grammar.matcher(), grammar.matcher()
    feed(advanced, tokenizer, "{}")
    assert advanced.finished
    assert not fresh.finished
    assert torch.equal(fresh.allowed_mask(), grammar.matcher().allowed_mask())


def test_fill_masks_applies_each_rows_mask_and_leaves_free_rows_alone(
    compiler: GrammarCompiler, tokenizer: Any
) -> None:
    opened = compiler.compile("json_object").matcher()
    feed(opened, tokenizer, '{"a": ')
    rows: list[Matcher | None] = [compiler.compile("json_object").matcher(), None, opened]
    logits = torch.randn(3, MODEL_VOCAB, generator=torch.Generator().manual_seed(0))
    before = logits.clone()
    fill_masks(rows, logits)
    for row, matcher in enumerate(rows):
        if matcher is None:
            assert torch.equal(logits[row], before[row])
        else:
            allowed = matcher.allowed_mask()
            assert torch.equal(torch.isfinite(logits[row]), allowed)
            assert torch.equal(logits[row][allowed], before[row][allowed])
    with pytest.raises(ValueError, match="do not match"):
        fill_masks(rows, torch.zeros(3, TOKENIZER_VOCAB_SIZE))
