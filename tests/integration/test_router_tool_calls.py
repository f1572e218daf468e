"""Tool calling through the router, against real NATS and Redis with a stand-in worker that
writes scripted output: what reaches the worker (tools, grammar, history) and the answers the
openai client reads, whole and streamed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from .router_stubs import MODEL, RunningRouter, StubWorker

pytestmark = pytest.mark.integration

TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    },
    {"type": "function", "function": {"name": "get_time"}},
]
HI: Any = [{"role": "user", "content": "Weather in Paris?"}]
HERMES = [
    "Let me look.",
    "<tool_call>\n",
    '{"name": "get_weather", ',
    '"arguments": {"city": "Paris"}}',
    "\n</tool_call>",
]


@pytest.fixture
async def client(router: RunningRouter) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=router.v1, api_key="unused", max_retries=0, timeout=20
    ) as c:
        yield c


def _calls(message: Any) -> list[tuple[str, Any]]:
    return [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []]


async def test_a_named_function_is_constrained_and_answered_as_its_call(
    warm: StubWorker, client: openai.AsyncOpenAI
) -> None:
    warm.pieces = ['{"city"', ': "Paris"}']
    named: Any = {"type": "function", "function": {"name": "get_weather"}}
    reply = await client.chat.completions.create(
        model=MODEL, messages=HI, tools=TOOLS, tool_choice=named
    )
    sent = warm.requests[-1]
    assert [t["function"]["name"] for t in json.loads(sent.tools_json)] == [
        "get_weather",
        "get_time",
    ]
    assert sent.params.grammar is not None
    assert json.loads(sent.params.grammar.json_schema) == TOOLS[0]["function"]["parameters"]
    assert reply.choices[0].finish_reason == "tool_calls"
    assert _calls(reply.choices[0].message) == [("get_weather", {"city": "Paris"})]

    stream = await client.chat.completions.create(
        model=MODEL, messages=HI, tools=TOOLS, tool_choice=named, stream=True
    )
    arguments, finish = [], None
    async for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or ():
                arguments.append(call.function.arguments if call.function else None)
            finish = choice.finish_reason or finish
    assert arguments == ['{"city"', ': "Paris"}']  # as they come
    assert finish == "tool_calls"


async def test_required_and_auto_answers(warm: StubWorker, client: openai.AsyncOpenAI) -> None:
    warm.pieces = ['[{"name": "get_time", "arguments": {}}]']
    reply = await client.chat.completions.create(
        model=MODEL, messages=HI, tools=TOOLS, tool_choice="required", parallel_tool_calls=False
    )
    grammar = warm.requests[-1].params.grammar
    assert grammar is not None
    assert json.loads(grammar.json_schema)["maxItems"] == 1
    assert _calls(reply.choices[0].message) == [("get_time", {})]

    warm.pieces = HERMES
    auto = await client.chat.completions.create(model=MODEL, messages=HI, tools=TOOLS)
    assert warm.requests[-1].params.grammar is None
    assert auto.choices[0].message.content == "Let me look."
    assert _calls(auto.choices[0].message) == [("get_weather", {"city": "Paris"})]
    assert auto.choices[0].finish_reason == "tool_calls"

    stream = await client.chat.completions.create(
        model=MODEL, messages=HI, tools=TOOLS, stream=True
    )
    content, calls = [], []
    async for chunk in stream:
        for choice in chunk.choices:
            content.append(choice.delta.content or "")
            calls += choice.delta.tool_calls or []
    assert "".join(content) == "Let me look."  # held back until the calls are known
    assert [(c.index, c.function.name if c.function else None) for c in calls] == [
        (0, "get_weather")
    ]

    none = await client.chat.completions.create(
        model=MODEL, messages=HI, tools=TOOLS, tool_choice="none"
    )
    assert warm.requests[-1].tools_json == ""
    assert none.choices[0].message.content == "".join(HERMES)  # text, as it was written
    assert none.choices[0].message.tool_calls is None


async def test_tool_call_history_reaches_the_worker(
    warm: StubWorker, client: openai.AsyncOpenAI
) -> None:
    history: Any = [
        *HI,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny."},
    ]
    reply = await client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS)
    assert reply.choices[0].message.content == "Hello, world!"
    sent = warm.requests[-1].messages
    assert sent is not None
    (call,) = sent[1].tool_calls
    assert (call.id, call.name, call.arguments) == ("call_1", "get_weather", '{"city": "Paris"}')
    assert (sent[2].role, sent[2].tool_call_id, sent[2].name, sent[2].content) == (
        "tool",
        "call_1",
        "get_weather",
        "Sunny.",
    )
