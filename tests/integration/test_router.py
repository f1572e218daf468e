"""The router's OpenAI API against real NATS and Redis, with stand-in scheduler and worker."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import httpx
import openai
import pytest

from libs.protocol import Bus
from libs.protocol.errors import BadRequestError
from libs.protocol.events import InstanceStoppedEvent, RequestCompletedEvent

from .router_stubs import (
    MODEL,
    EventLog,
    RunningRouter,
    StubWorker,
    router_settings,
    running_router,
)

pytestmark = pytest.mark.integration

TIMEOUT = httpx.Timeout(20.0)


@pytest.fixture
async def client(router: RunningRouter) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=router.v1, api_key="unused", max_retries=0, timeout=20
    ) as c:
        yield c


def sse_payloads(body: str) -> list[str]:
    """The ``data:`` payloads of an SSE body, checking the framing on the way."""
    events = [e for e in body.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events), events
    return [e.removeprefix("data: ") for e in events]


def assert_openai_error(resp: httpx.Response, status: int) -> dict[str, object]:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str)
    assert error["message"]
    return dict(error)


# --- answers ------------------------------------------------------------------------------


async def test_chat_completion_through_openai_client(
    warm: StubWorker, client: openai.AsyncOpenAI
) -> None:
    resp = await client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        ],
        max_tokens=10,
        temperature=0,
        seed=7,
        stop=["\n"],
    )
    assert resp.object == "chat.completion"
    assert resp.model == MODEL
    assert resp.id.startswith("chatcmpl-")
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content == "Hello, world!"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (3, 4)
    assert resp.usage.total_tokens == 7
    (req,) = warm.requests
    assert [(m.role, m.content) for m in req.messages or []] == [
        ("system", "be brief"),
        ("user", "hi"),
    ]
    assert req.params.max_tokens == 10
    assert (req.params.temperature, req.params.seed, req.params.stop) == (0.0, 7, ["\n"])
    assert req.request_id == resp.id


async def test_chat_stream_through_openai_client_with_usage(
    warm: StubWorker, client: openai.AsyncOpenAI
) -> None:
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello, world!"
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[-1].choices[0].finish_reason == "stop"
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (3, 4)
    assert all(c.usage is None for c in chunks[:-1])


async def test_completions_streamed_and_not_through_openai_client(
    warm: StubWorker, client: openai.AsyncOpenAI
) -> None:
    resp = await client.completions.create(model=MODEL, prompt="Say hi", max_tokens=2)
    assert resp.object == "text_completion"
    assert resp.choices[0].text == "Hello,"
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None
    assert resp.usage.completion_tokens == 2
    assert warm.requests[-1].prompt == "Say hi"

    stream = await client.completions.create(model=MODEL, prompt="Say hi", stream=True)
    chunks = [c async for c in stream]
    assert all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in chunks) == "Hello, world!"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert warm.requests[-1].params.max_tokens == 16  # OpenAI's default for completions


async def test_completion_accepts_token_ids(warm: StubWorker, http: httpx.AsyncClient) -> None:
    resp = await http.post(
        "/v1/completions", json={"model": MODEL, "prompt": [5, 6, 7], "max_tokens": 3}
    )
    assert resp.status_code == 200, resp.text
    assert warm.requests[-1].prompt_token_ids == [5, 6, 7]
    assert resp.json()["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}


async def test_chat_sse_shape_ends_with_done(warm: StubWorker, http: httpx.AsyncClient) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    resp = await http.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    payloads = sse_payloads(resp.text)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert chunks[0]["choices"] == [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
    ]
    assert [c["choices"][0]["delta"] for c in chunks[1:-1]] == [{"content": p} for p in warm.pieces]
    assert chunks[-1]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    for c in chunks:
        assert set(c) == {"id", "object", "created", "model", "choices"}  # no usage asked
        assert c["object"] == "chat.completion.chunk"


async def test_completion_sse_with_include_usage(warm: StubWorker, http: httpx.AsyncClient) -> None:
    body = {
        "model": MODEL,
        "prompt": "x",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    resp = await http.post("/v1/completions", json=body)
    payloads = sse_payloads(resp.text)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == "Hello, world!"


async def test_sampling_fields_are_forwarded_and_harmless_fields_ignored(
    warm: StubWorker, http: httpx.AsyncClient
) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 50,
        "max_completion_tokens": 3,
        "temperature": 0.7,
        "top_p": 0.9,
        "stop": "END",
        "n": 1,
        "user": "someone",
        "logprobs": False,
        "frequency_penalty": 0.5,
        "logit_bias": {"7": -100},
        "top_k": 20,
        "min_tokens": 1,
        "store": False,
        "metadata": {"k": "v"},
        "tools": [],
    }
    resp = await http.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200, resp.text
    params = warm.requests[-1].params
    assert (params.max_tokens, params.temperature, params.top_p) == (3, 0.7, 0.9)
    assert params.stop == ["END"]
    assert (params.frequency_penalty, params.top_k, params.min_tokens) == (0.5, 20, 1)
    assert [(b.token_id, b.bias) for b in params.logit_bias] == [(7, -100.0)]
    assert resp.json()["choices"][0]["finish_reason"] == "length"


# --- errors -------------------------------------------------------------------------------


async def test_unknown_model_is_404(warm: StubWorker, client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        await client.chat.completions.create(
            model="nope", messages=[{"role": "user", "content": "hi"}]
        )
    assert "nope" in info.value.message
    assert warm.requests == []


async def test_malformed_json_is_400(router: RunningRouter, http: httpx.AsyncClient) -> None:
    resp = await http.post(
        "/v1/chat/completions",
        content=b'{"model": "m", "messages": [',
        headers={"content-type": "application/json"},
    )
    error = assert_openai_error(resp, 400)
    assert "JSON" in str(error["message"])
    assert error["type"] == "invalid_request_error"


async def test_missing_or_wrong_fields_are_400_naming_the_field(
    router: RunningRouter, http: httpx.AsyncClient
) -> None:
    resp = await http.post("/v1/chat/completions", json={"model": MODEL})
    assert assert_openai_error(resp, 400)["param"] == "messages"
    resp = await http.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]},
    )
    assert "role" in str(assert_openai_error(resp, 400)["param"])
    resp = await http.post("/v1/completions", json={"model": MODEL, "prompt": ["a", "b"]})
    assert "one prompt" in str(assert_openai_error(resp, 400)["message"])


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("n", 17, "n"),
        ("max_tokens", 0, "max_tokens must be between 1 and 1048576"),
        ("max_tokens", -5, "max_tokens must be between 1 and 1048576"),
        ("max_tokens", 2**20 + 1, "max_tokens must be between 1 and 1048576"),
        ("max_tokens", 10**30, "max_tokens"),
        ("max_completion_tokens", 0, "max_completion_tokens must be between"),
        ("temperature", 5, "temperature"),
        ("top_logprobs", 2, "top_logprobs needs logprobs: true"),
        ("tool_choice", "required", "required tool calls need tools"),
        ("response_format", {"type": "json_schema"}, "goes with (and only with)"),
        ("some_future_field", {"x": 1}, "unknown field"),
        ("min_tokens", 2000, "min_tokens (2000) must not exceed max_tokens (1024)"),
    ],
)
async def test_unsupported_or_absurd_values_are_400(
    router: RunningRouter, http: httpx.AsyncClient, field: str, value: object, match: str
) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], field: value}
    resp = await http.post("/v1/chat/completions", json=body)
    error = assert_openai_error(resp, 400)
    assert match in str(error["message"])
    assert error["param"] == field


async def test_worker_bad_request_is_400(
    warm: StubWorker, client: openai.AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    warm.reject = BadRequestError("prompt (5000 tokens) + max_tokens exceed the context (4096)")
    with pytest.raises(openai.BadRequestError, match="exceed the context"):
        await client.completions.create(model=MODEL, prompt="x", max_tokens=4000)
    body = {"model": MODEL, "prompt": "x", "stream": True}
    resp = await http.post("/v1/completions", json=body)  # an HTTP status, not an SSE error
    assert assert_openai_error(resp, 400)["code"] == "bad_request"


async def test_error_mid_stream_is_an_sse_error_event(
    warm: StubWorker, router: RunningRouter, http: httpx.AsyncClient
) -> None:
    warm.fail_after = 1
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": True}
    resp = await http.post("/v1/chat/completions", json=body)
    payloads = sse_payloads(resp.text)
    assert payloads[-1] == "[DONE]"
    error = json.loads(payloads[-2])["error"]
    assert "device lost" in error["message"]
    assert error["type"] == "server_error"
    async with openai.AsyncOpenAI(base_url=router.v1, api_key="x", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True
        )
        with pytest.raises(openai.APIError, match="device lost"):
            async for _ in stream:
                pass


async def test_instance_stopping_mid_stream_ends_the_answer_at_once(
    warm: StubWorker, nats_server, redis_server, root: str, bus: Bus
) -> None:
    # A worker that dies sends nothing more; the scheduler's instance.stopped must end the
    # stream rather than the 10 s idle timeout. With failover off: resuming the generation
    # elsewhere is tested in test_router_failover.py.
    warm.pieces = [f"t{i} " for i in range(400)]
    warm.delay = 0.05
    body = {"model": MODEL, "prompt": "x", "max_tokens": 400, "stream": True}
    settings = router_settings(nats_server.url, redis_server.url, root, SLLM_FAILOVER_ATTEMPTS="0")
    started = time.monotonic()
    async with (
        running_router(settings) as router,
        httpx.AsyncClient(base_url=router.url, timeout=TIMEOUT) as http,
        http.stream("POST", "/v1/completions", json=body) as resp,
    ):
        lines = []
        async for line in resp.aiter_lines():
            lines.append(line)
            if len(lines) == 4:
                await bus.emit(
                    InstanceStoppedEvent(
                        instance_id="i-warm", model=MODEL, worker_id="w0", reason="worker died"
                    )
                )
    assert time.monotonic() - started < 8
    payloads = [ln.removeprefix("data: ") for ln in lines if ln.startswith("data: ")]
    assert payloads[-1] == "[DONE]"
    error = json.loads(payloads[-2])["error"]
    assert "worker died" in error["message"]
    assert error["code"] == "unavailable"


async def test_unknown_route_gets_openai_error_body(
    router: RunningRouter, http: httpx.AsyncClient
) -> None:
    assert_openai_error(await http.get("/v1/nothing-here"), 404)


# --- disconnects --------------------------------------------------------------------------


async def test_client_disconnect_mid_stream_frees_the_worker_slot(
    warm: StubWorker, router: RunningRouter, bus: Bus
) -> None:
    warm.pieces = [f"t{i} " for i in range(1000)]
    warm.delay = 0.02  # 20 s for the whole answer: the test must not wait for it
    events = await EventLog().watch(bus, "request.completed", RequestCompletedEvent)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": True}
    async with (
        httpx.AsyncClient(base_url=router.url, timeout=TIMEOUT) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as resp,
    ):
        assert resp.status_code == 200
        seen = 0
        async for line in resp.aiter_lines():
            seen += line.startswith("data: ")
            if seen >= 3:
                break
    # Leaving the block closed the connection: the worker's generator must be closed.
    await asyncio.wait_for(warm.closed.wait(), 5)
    assert not warm.finished.is_set()
    assert warm.sent < 1000
    ev = await events.wait_for(lambda e: e.model == MODEL)
    assert ev.status == "cancelled"
    assert ev.completion_tokens < 1000
    assert router.svc.serving.backend.view.inflight == {}


async def test_client_disconnect_during_a_whole_answer_stops_the_worker(
    warm: StubWorker, router: RunningRouter
) -> None:
    warm.pieces = [f"t{i} " for i in range(1000)]
    warm.delay = 0.02
    body = {"model": MODEL, "prompt": "x", "max_tokens": 1000}
    async with httpx.AsyncClient(base_url=router.url, timeout=0.5) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post("/v1/completions", json=body)
    await asyncio.wait_for(warm.closed.wait(), 5)
    assert not warm.finished.is_set()


# --- events, metrics, auth, health --------------------------------------------------------


async def test_request_completed_events(
    warm: StubWorker, client: openai.AsyncOpenAI, bus: Bus
) -> None:
    events = await EventLog().watch(bus, "request.completed", RequestCompletedEvent)
    resp = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}]
    )
    ok = await events.wait_for(lambda e: e.request_id == resp.id)
    assert (ok.status, ok.finish_reason, ok.model) == ("ok", "stop", MODEL)
    assert (ok.instance_id, ok.worker_id) == ("i-warm", "w0")
    assert (ok.prefill_s, ok.decode_s) == (0.01, 0.02)
    assert (ok.prompt_tokens, ok.completion_tokens) == (3, 4)
    assert ok.load_s == 0.0
    assert 0 <= ok.queue_s <= ok.total_s
    assert ok.source == "router-test"

    with pytest.raises(openai.NotFoundError):
        await client.completions.create(model="missing", prompt="x")
    bad = await events.wait_for(lambda e: e.model == "missing")
    assert bad.status == "error"
    assert bad.error.startswith("not_found")


async def test_metrics_expose_requests_latency_and_queue(
    warm: StubWorker, client: openai.AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.NotFoundError):
        await client.completions.create(model="made-up-name", prompt="x")
    resp = await http.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    text = resp.text
    assert f'sllm_router_requests_total{{model="{MODEL}",status="ok"}} 1.0' in text
    assert 'sllm_router_requests_total{model="(unknown)",status="error"} 1.0' in text
    assert "made-up-name" not in text
    assert f'sllm_router_time_to_first_token_seconds_count{{model="{MODEL}"}} 1.0' in text
    assert f'sllm_router_request_duration_seconds_count{{model="{MODEL}"}} 1.0' in text
    assert f'sllm_router_generated_tokens_total{{model="{MODEL}"}} 4.0' in text
    assert "# TYPE sllm_router_queue_depth gauge" in text
    assert "# TYPE sllm_router_cold_starts_total counter" in text


async def test_api_keys_guard_v1_but_not_health(
    nats_server, redis_server, root: str, warm: StubWorker
) -> None:
    settings = router_settings(
        nats_server.url, redis_server.url, root, SLLM_API_KEYS="k-one, k-two"
    )
    async with (
        running_router(settings) as router,
        httpx.AsyncClient(base_url=router.url, timeout=TIMEOUT) as http,
    ):
        resp = await http.get("/v1/models")
        error = assert_openai_error(resp, 401)
        assert error["code"] == "invalid_api_key"
        assert resp.headers["www-authenticate"] == "Bearer"
        wrong = await http.get("/v1/models", headers={"Authorization": "Bearer k-three"})
        assert_openai_error(wrong, 401)
        basic = await http.get("/v1/models", headers={"Authorization": "Basic k-one"})
        assert_openai_error(basic, 401)
        for path in ("/health", "/ready", "/metrics"):
            assert (await http.get(path)).status_code == 200, path
        async with openai.AsyncOpenAI(base_url=router.v1, api_key="k-two", max_retries=0) as c:
            resp2 = await c.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "x"}]
            )
            assert resp2.choices[0].message.content == "Hello, world!"
        async with openai.AsyncOpenAI(base_url=router.v1, api_key="bad", max_retries=0) as c:
            with pytest.raises(openai.AuthenticationError):
                await c.models.list()


async def test_health_and_ready(router: RunningRouter, http: httpx.AsyncClient) -> None:
    assert (await http.get("/health")).json() == {"status": "alive"}
    resp = await http.get("/ready")
    assert resp.status_code == 200
    assert resp.json()["status"] == "ready"


async def test_warm_requests_add_little_latency(warm: StubWorker, http: httpx.AsyncClient) -> None:
    body = {"model": MODEL, "prompt": "x", "max_tokens": 1}
    await http.post("/v1/completions", json=body)
    started = time.monotonic()
    for _ in range(10):
        resp = await http.post("/v1/completions", json=body)
        assert resp.status_code == 200
    # Generous: this only catches a path that waits (a poll, a sleep) on warm requests.
    assert (time.monotonic() - started) / 10 < 1.0
