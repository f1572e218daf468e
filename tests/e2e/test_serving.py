"""The serving path end to end: `sllm up`, the official openai client, real services.

One cluster (2 nodes x 1 CPU worker) serves the whole module; tests run in file order.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from libs.demo import write_demo_model

from .cluster import SLLM, UpCluster, up_cluster
from .reference import Reference

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Tell me about the sea."}]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpCluster]:
    with up_cluster(tmp_path_factory.mktemp("serving"), nodes=2, SLLM_MAX_BATCH="16") as c:
        yield c


@pytest.fixture(scope="module")
def reference(cluster: UpCluster) -> Reference:
    return Reference(cluster.demo_dir)


@pytest.fixture(scope="module")
def client(cluster: UpCluster) -> openai.OpenAI:
    return openai.OpenAI(base_url=cluster.base_url + "/v1", api_key="unused", timeout=180)


def _events(cluster: UpCluster) -> list[dict[str, object]]:
    out = subprocess.run(
        [SLLM, "events", "--all", "--timeout", "2"],
        env=cluster.service_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_cold_start_then_warm_request(
    cluster: UpCluster, client: openai.OpenAI, reference: Reference
) -> None:
    first = client.chat.completions.create(
        model="demo", messages=MESSAGES, max_tokens=24, temperature=0
    )
    want_text, want_finish = reference.chat(MESSAGES, 24)
    assert first.choices[0].message.content == want_text
    assert first.choices[0].finish_reason == want_finish

    events = _events(cluster)
    kinds = [e["kind"] for e in events]
    for kind in (
        "scheduler.placed",
        "instance.starting",
        "storage.fetched",
        "load.phase",
        "instance.ready",
        "request.completed",
    ):
        assert kind in kinds, kind
    phases = {e["phase"] for e in events if e["kind"] == "load.phase"}
    assert {"ensure", "read", "build", "tokenizer"} <= phases
    (cold,) = [e for e in events if e["kind"] == "request.completed"]
    assert float(cold["load_s"]) > 0  # type: ignore[arg-type]

    second = client.chat.completions.create(
        model="demo", messages=MESSAGES, max_tokens=24, temperature=0
    )
    assert second.choices[0].message.content == want_text
    events = _events(cluster)
    assert [e["kind"] for e in events].count("instance.starting") == 1  # nothing loaded again
    warm = [e for e in events if e["kind"] == "request.completed"][-1]
    assert warm["load_s"] == 0.0
    # No wait for an instance; the engine's admission (the worker's queue) takes a moment.
    assert float(warm["queue_s"]) < 0.05  # type: ignore[arg-type]


def test_streamed_and_non_streamed_answers_equal_transformers(
    client: openai.OpenAI, reference: Reference
) -> None:
    want_text, want_finish = reference.chat(MESSAGES, 40)
    stream = client.chat.completions.create(
        model="demo",
        messages=MESSAGES,
        max_tokens=40,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    parts, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(parts) == want_text
    assert finish == want_finish
    assert usage is not None
    assert usage.completion_tokens > 0

    prompt = "The quick brown fox"
    want_text, _ = reference.complete(prompt, 20)
    done = client.completions.create(model="demo", prompt=prompt, max_tokens=20, temperature=0)
    assert done.choices[0].text == want_text
    streamed = client.completions.create(
        model="demo", prompt=prompt, max_tokens=20, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == want_text


def test_32_concurrent_streams_across_two_models(
    cluster: UpCluster, client: openai.OpenAI, reference: Reference, tmp_path: Path
) -> None:
    other_dir = write_demo_model(tmp_path / "demo-b", seed=1)
    created = httpx.post(
        cluster.base_url + "/v1/deployments",
        json={"name": "demo-b", "checkpoint_uri": other_dir.as_uri()},
        timeout=30,
    )
    assert created.status_code == 201, created.text
    other = Reference(other_dir)
    prompts = [f"Story number {i}:" for i in range(16)]
    want = {("demo", p): reference.complete(p, 12)[0] for p in prompts} | {
        ("demo-b", p): other.complete(p, 12)[0] for p in prompts
    }

    async def one(aclient: openai.AsyncOpenAI, model: str, prompt: str) -> tuple[str, str, str]:
        stream = await aclient.completions.create(
            model=model, prompt=prompt, max_tokens=12, temperature=0, stream=True
        )
        text = "".join([c.choices[0].text async for c in stream if c.choices])
        return model, prompt, text

    async def all_of_them() -> list[tuple[str, str, str]]:
        async with openai.AsyncOpenAI(
            base_url=cluster.base_url + "/v1", api_key="unused", timeout=240
        ) as aclient:
            return await asyncio.gather(
                *(one(aclient, m, p) for m in ("demo", "demo-b") for p in prompts)
            )

    results = asyncio.run(all_of_them())
    assert len(results) == 32
    for model, prompt, text in results:
        assert text == want[(model, prompt)], (model, prompt)


def test_bad_input_gets_clear_errors(cluster: UpCluster, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(model="demo", messages=MESSAGES, max_tokens=10**12)
    with pytest.raises(openai.BadRequestError, match="context"):
        client.chat.completions.create(model="demo", messages=MESSAGES, max_tokens=1_000_000)
    with pytest.raises(openai.BadRequestError, match="n"):
        client.chat.completions.create(model="demo", messages=MESSAGES, n=100)
    bad = httpx.post(
        cluster.base_url + "/v1/chat/completions",
        content=b'{"model": "demo", "messages": [',
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert bad.status_code in (400, 422)
    assert "error" in bad.json()


class Pet(BaseModel):
    """What the structured-output tests ask for (a random model, constrained; closed, or a
    random model may add keys until max_tokens)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=10)
    age: int = Field(ge=0, le=30)
    kind: Literal["cat", "dog"]


def _check_pet(value: object) -> None:
    pet = Pet.model_validate(value)
    assert len(pet.name) <= 10
    assert 0 <= pet.age <= 30


def test_structured_output_with_the_sdk_and_langchain(
    cluster: UpCluster, client: openai.OpenAI
) -> None:
    schema = Pet.model_json_schema()
    fmt: Any = {"type": "json_schema", "json_schema": {"name": "Pet", "schema": schema}}
    for temperature in (0.0, 1.0):
        reply = client.chat.completions.create(
            model="demo",
            messages=MESSAGES,
            max_tokens=600,
            temperature=temperature,
            seed=5,
            response_format=fmt,
        )
        assert reply.choices[0].finish_reason == "stop"
        _check_pet(json.loads(reply.choices[0].message.content or ""))
    obj = client.chat.completions.create(
        model="demo",
        messages=MESSAGES,
        max_tokens=600,
        seed=5,  # a random model may write one JSON string until max_tokens: fix the draw
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(obj.choices[0].message.content or ""), dict)
    parsed = client.chat.completions.parse(
        model="demo", messages=MESSAGES, max_tokens=600, seed=5, response_format=Pet
    )
    assert isinstance(parsed.choices[0].message.parsed, Pet)

    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        base_url=cluster.base_url + "/v1",
        api_key=SecretStr("unused"),
        model="demo",
        max_completion_tokens=600,
        seed=5,
    )
    pet = llm.with_structured_output(Pet, method="json_schema").invoke("Describe a pet.")
    assert isinstance(pet, Pet)


def test_sampling_parameters_and_logprobs_through_the_sdk(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="demo", messages=MESSAGES, max_tokens=8, temperature=0, logprobs=True, top_logprobs=2
    )
    assert reply.choices[0].logprobs is not None
    content = reply.choices[0].logprobs.content or []
    assert reply.usage is not None
    assert len(content) == reply.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0.0
        assert len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)  # greedy
    # A huge logit bias forces a token; ignore_eos and min_tokens ride in extra_body (vLLM's).
    forced = client.completions.create(
        model="demo",
        prompt="The sea",
        max_tokens=6,
        logit_bias={"300": 100},
        logprobs=1,
        extra_body={"ignore_eos": True, "min_tokens": 6},
    )
    assert forced.usage is not None
    assert forced.usage.completion_tokens == 6
    assert forced.choices[0].finish_reason == "length"
    tokens = forced.choices[0].logprobs.tokens if forced.choices[0].logprobs else None
    assert tokens is not None
    assert len(set(tokens)) == 1
    streamed = client.completions.create(
        model="demo", prompt="The sea", max_tokens=6, temperature=0, logprobs=2, stream=True
    )
    pieces = [c.choices[0].logprobs for c in streamed if c.choices and c.choices[0].logprobs]
    assert sum(len(p.tokens or []) for p in pieces) == 6
    with pytest.raises(openai.BadRequestError, match="tools"):
        client.chat.completions.create(
            model="demo", messages=MESSAGES, tools=[{"type": "custom", "custom": {"name": "f"}}]
        )


class Weather(BaseModel):
    """Get the current weather in a city."""

    # Closed ("additionalProperties": false): a random model would write extra keys until
    # max_tokens cut the arguments short.
    model_config = ConfigDict(extra="forbid")

    city: str = Field(max_length=10)
    unit: Literal["C", "F"]


WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": Weather.model_json_schema(),
    },
}
TIME_TOOL: Any = {
    "type": "function",
    "function": {"name": "get_time", "description": "The time now"},  # no arguments
}
ASK_WEATHER: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the weather in Paris?"}
]


def _calls(message: Any) -> list[tuple[str, str, Any]]:
    """A message's tool calls as (id, name, parsed arguments)."""
    out = []
    for call in message.tool_calls or []:
        assert call.type == "function"
        out.append((call.id, call.function.name, json.loads(call.function.arguments)))
    return out


def test_tool_calls_with_the_sdk(client: openai.OpenAI) -> None:
    named: Any = {"type": "function", "function": {"name": "get_weather"}}
    reply = client.chat.completions.create(
        model="demo",
        messages=ASK_WEATHER,
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice=named,
        max_tokens=300,
        seed=3,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    ((call_id, name, arguments),) = _calls(choice.message)
    assert call_id.startswith("call_")
    assert name == "get_weather"
    Weather.model_validate(arguments)

    required = client.chat.completions.create(
        model="demo",
        messages=ASK_WEATHER,
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice="required",
        max_tokens=400,
        temperature=0,
    )
    assert required.choices[0].finish_reason == "tool_calls"
    calls = _calls(required.choices[0].message)
    assert calls
    for _, name, arguments in calls:
        assert name in ("get_weather", "get_time")
        if name == "get_weather":
            Weather.model_validate(arguments)
        else:
            assert arguments == {}

    # Streamed, as the SDK's helper gathers it; parsed into the model by `parse`.
    with client.chat.completions.stream(
        model="demo",
        messages=ASK_WEATHER,
        tools=[openai.pydantic_function_tool(Weather)],
        tool_choice={"type": "function", "function": {"name": "Weather"}},
        max_tokens=300,
    ) as stream:
        final = stream.get_final_completion()
    (streamed,) = final.choices[0].message.tool_calls or []
    assert isinstance(streamed.function.parsed_arguments, Weather)
    assert final.choices[0].finish_reason == "tool_calls"

    # The history of a call and its result is rendered, and answered.
    history: list[ChatCompletionMessageParam] = [
        *ASK_WEATHER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": json.dumps(arguments)},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": "Sunny, 21 degrees."},
    ]
    answer = client.chat.completions.create(
        model="demo", messages=history, tools=[WEATHER_TOOL], max_tokens=16, temperature=0
    )
    assert answer.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert answer.usage is not None
    assert answer.usage.prompt_tokens > 100  # the tools and the tool-call history are in it
    plain = client.chat.completions.create(
        model="demo",
        messages=history,
        tools=[WEATHER_TOOL],
        tool_choice="none",
        max_tokens=4,
        temperature=0,
    )
    assert plain.choices[0].message.tool_calls is None
    assert plain.usage is not None
    assert plain.usage.prompt_tokens < answer.usage.prompt_tokens  # "none": tools left out


def test_tool_calls_with_langchain(cluster: UpCluster) -> None:
    from langchain_core.messages import AIMessage
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        base_url=cluster.base_url + "/v1",
        api_key=SecretStr("unused"),
        model="demo",
        max_completion_tokens=300,
        seed=5,
    )
    message = llm.bind_tools([Weather], tool_choice="Weather").invoke("Weather in Paris?")
    assert isinstance(message, AIMessage)
    (call,) = message.tool_calls
    assert call["name"] == "Weather"
    Weather.model_validate(call["args"])
    weather = llm.with_structured_output(Weather, method="function_calling").invoke("Paris?")
    assert isinstance(weather, Weather)


def test_n_choices_whole_and_streamed(client: openai.OpenAI, reference: Reference) -> None:
    greedy = client.chat.completions.create(
        model="demo", messages=MESSAGES, max_tokens=12, temperature=0, n=2
    )
    want_text, _ = reference.chat(MESSAGES, 12)
    assert [c.index for c in greedy.choices] == [0, 1]
    assert [c.message.content for c in greedy.choices] == [want_text, want_text]
    sampled = client.completions.create(
        model="demo", prompt="Once upon a time", max_tokens=16, temperature=1.0, seed=7, n=3
    )
    texts = [c.text for c in sorted(sampled.choices, key=lambda c: c.index)]
    assert len(set(texts)) == 3  # each choice samples with its own seed
    assert sampled.usage is not None
    if all(c.finish_reason == "length" for c in sampled.choices):
        assert sampled.usage.completion_tokens == 3 * 16  # every choice's tokens count
    else:
        assert sampled.usage.completion_tokens < 3 * 16
    streamed = client.completions.create(
        model="demo",
        prompt="Once upon a time",
        max_tokens=16,
        temperature=1.0,
        seed=7,
        n=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    parts: dict[int, list[str]] = {0: [], 1: [], 2: []}
    usage = None
    for chunk in streamed:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            parts[choice.index].append(choice.text)
    assert ["".join(parts[i]) for i in range(3)] == texts  # the same seeds, the same samples
    assert usage is not None
    assert usage.completion_tokens == sampled.usage.completion_tokens


def test_models_and_deployment_inspection(cluster: UpCluster, client: openai.OpenAI) -> None:
    assert {m.id for m in client.models.list()} >= {"demo", "demo-b"}
    info = httpx.get(cluster.base_url + "/v1/deployments/demo", timeout=30).json()
    assert [i["status"] for i in info["instances"]] == ["ready"]
    deleted = httpx.delete(cluster.base_url + "/v1/deployments/demo-b", timeout=60)
    assert deleted.status_code == 200
    assert len(deleted.json()["stopped_instances"]) == 1
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="demo-b", prompt="x", max_tokens=2)
