"""Constrained decoding through the batched engine: a grammar-bound job yields a value that
parses and ends with "complete" (its last token's text kept), next to unconstrained jobs; a
resumed job re-enters its grammar through the tokens generated so far."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from libs.protocol.errors import UnavailableError
from services.worker.batch_policy import Limits
from services.worker.engine import Engine, Job
from services.worker.grammar import GrammarCompiler
from services.worker.sampling import Sampling

from .engine_jobs import collect

pytestmark = pytest.mark.unit

PROMPT = [1, 77, 78, 79, 80, 81, 82, 83, 84, 85, 86]
SCHEMA = json.dumps(
    {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "n": {"type": "integer", "minimum": 0, "maximum": 99},
            "ok": {"type": "boolean"},
        },
        "required": ["name", "n", "ok"],
        "additionalProperties": False,
    }
)


@pytest.fixture
async def engine(tiny_model: Any) -> AsyncIterator[Engine]:
    e = Engine(tiny_model, eos_ids=frozenset({2}), limits=Limits(8, 1 << 14, 16))
    e.start()
    yield e
    await asyncio.to_thread(e.stop, UnavailableError("test over"), 10.0)


@pytest.fixture(scope="module")
def compiler(tiny_model: Any, tiny_tokenizer: Any) -> GrammarCompiler:
    vocab = int(tiny_model.get_input_embeddings().num_embeddings)
    return GrammarCompiler(tiny_tokenizer, vocab, frozenset({2}))


@pytest.mark.parametrize("sampling", [Sampling(), Sampling(temperature=1.0, seed=4)])
async def test_a_schema_bound_job_yields_valid_json_beside_free_ones(
    engine: Engine, compiler: GrammarCompiler, tiny_tokenizer: Any, sampling: Sampling
) -> None:
    loop = asyncio.get_running_loop()
    grammar = compiler.compile("json_schema", SCHEMA)
    free = [engine.submit(Job(PROMPT, 40, Sampling(temperature=1.0, seed=s)), loop) for s in (1, 2)]
    bound = engine.submit(Job(PROMPT, 200, sampling, grammar=grammar), loop)
    tokens, *_ = await asyncio.gather(collect(bound), *(collect(h) for h in free))
    assert tokens[-1].finish == "complete"
    value = json.loads(tiny_tokenizer.decode([t.token_id for t in tokens]))
    assert set(value) == {"name", "n", "ok"}
    assert isinstance(value["n"], int)
    assert 0 <= value["n"] <= 99
    assert isinstance(value["ok"], bool)


async def test_a_resumed_constrained_job_continues_its_grammar(
    engine: Engine, compiler: GrammarCompiler
) -> None:
    loop = asyncio.get_running_loop()
    grammar = compiler.compile("json_object")
    s = Sampling(temperature=0.8, seed=9)
    full = [
        t.token_id for t in await collect(engine.submit(Job(PROMPT, 60, s, grammar=grammar), loop))
    ]
    k = len(full) // 2
    rest = await collect(
        engine.submit(Job(PROMPT + full[:k], 60 - k, s, generated=k, grammar=grammar), loop)
    )
    assert full[:k] + [t.token_id for t in rest] == full
