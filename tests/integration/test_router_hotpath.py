"""The completion routes' hot path (a bare ASGI app in front of FastAPI) answers exactly as the
FastAPI routes do, against real NATS and Redis with stand-in scheduler and worker."""

from __future__ import annotations

import httpx
import pytest

from services.router.app import create_fastapi

from .router_stubs import (
    MODEL,
    RunningRouter,
    StubWorker,
    router_settings,
    running_router,
)
from .test_router import assert_openai_error

pytestmark = pytest.mark.integration

TIMEOUT = httpx.Timeout(20.0)
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
HI = [{"role": "user", "content": "hi"}]

# (path, body) pairs that each route must answer the same way on both paths.
CASES: list[tuple[str, object]] = [
    (CHAT, {"model": MODEL, "messages": HI, "max_tokens": 3}),
    (COMPLETIONS, {"model": MODEL, "prompt": "x", "max_tokens": 3}),
    (COMPLETIONS, {"model": MODEL, "prompt": [1, 2, 3], "max_tokens": 2}),
    (CHAT, {"model": MODEL}),
    (CHAT, {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}),
    (CHAT, {"model": MODEL, "messages": HI, "n": 2}),
    (CHAT, {"model": MODEL, "messages": HI, "max_tokens": 0}),
    (CHAT, {"model": MODEL, "messages": HI, "temperature": 5}),
    (CHAT, {"model": MODEL, "messages": HI, "keep_alive": "soon"}),
    (CHAT, {"model": MODEL, "messages": HI, "tools": [{"type": "function"}]}),
    (CHAT, {"model": MODEL, "messages": HI, "some_future_field": 1, "user": "u"}),
    (CHAT, {"model": MODEL, "messages": [*HI, {"role": "tool", "content": "x"}]}),
    (CHAT, {"model": MODEL, "messages": HI, "min_tokens": 9, "max_tokens": 3}),
    (CHAT, {"model": MODEL, "messages": HI, "max_tokens": 3, "logprobs": True, "top_logprobs": 2}),
    (COMPLETIONS, {"model": MODEL, "prompt": "x", "echo": True}),
    (CHAT, {"model": "nope", "messages": HI}),
    (COMPLETIONS, {"model": MODEL, "prompt": ["a", "b"]}),
    (COMPLETIONS, {"model": MODEL, "prompt": [-1]}),
    (COMPLETIONS, {"prompt": "x"}),
]


def _comparable(resp: httpx.Response) -> tuple[int, object]:
    """Status and body, less what differs between any two answers (id, creation time)."""
    body = resp.json()
    if resp.status_code == 200:
        body = {k: v for k, v in body.items() if k not in ("id", "created")}
    return resp.status_code, body


@pytest.mark.parametrize(("path", "body"), CASES)
async def test_the_hot_path_answers_as_the_fastapi_routes(
    warm: StubWorker, router: RunningRouter, http: httpx.AsyncClient, path: str, body: object
) -> None:
    # The same started service behind FastAPI alone (its routes still serve these paths).
    transport = httpx.ASGITransport(app=create_fastapi(router.svc))
    async with httpx.AsyncClient(transport=transport, base_url="http://fastapi") as direct:
        expected = await direct.post(path, json=body)
    got = await http.post(path, json=body)
    assert _comparable(got) == _comparable(expected)
    if got.status_code != 200:
        assert_openai_error(got, got.status_code)


async def test_a_body_without_a_json_content_type_is_read_as_json(
    warm: StubWorker, http: httpx.AsyncClient
) -> None:
    # What `curl -d '{...}'` sends (form-urlencoded) when the header is left out.
    resp = await http.post(
        COMPLETIONS,
        content=b'{"model": "%s", "prompt": "x"}' % MODEL.encode(),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["text"] == "Hello, world!"


async def test_empty_and_broken_bodies_are_400(
    router: RunningRouter, http: httpx.AsyncClient
) -> None:
    empty = assert_openai_error(await http.post(CHAT, content=b""), 400)
    assert "empty" in str(empty["message"])
    broken = assert_openai_error(
        await http.post(CHAT, content=b'{"model": "m", "messages": ['), 400
    )
    assert "not valid JSON" in str(broken["message"])
    not_an_object = assert_openai_error(await http.post(COMPLETIONS, json=[1, 2]), 400)
    assert "object" in str(not_an_object["message"])


async def test_a_body_larger_than_the_bus_can_carry_is_413(
    router: RunningRouter, http: httpx.AsyncClient
) -> None:
    limit = 4 * router.svc.bus.nc.max_payload
    prompt = "x" * limit
    resp = await http.post(COMPLETIONS, json={"model": MODEL, "prompt": prompt})
    error = assert_openai_error(resp, 413)
    assert str(limit) in str(error["message"])
    # The connection is still good for the next request.
    assert (await http.get("/health")).status_code == 200


async def test_api_keys_guard_the_hot_path(
    nats_server, redis_server, root: str, warm: StubWorker
) -> None:
    settings = router_settings(nats_server.url, redis_server.url, root, SLLM_API_KEYS="k-one")
    body = {"model": MODEL, "prompt": "x"}
    async with (
        running_router(settings) as router,
        httpx.AsyncClient(base_url=router.url, timeout=TIMEOUT) as http,
    ):
        for path in (COMPLETIONS, CHAT):
            resp = await http.post(path, json=body)
            assert assert_openai_error(resp, 401)["code"] == "invalid_api_key"
            assert resp.headers["www-authenticate"] == "Bearer"
        wrong = await http.post(COMPLETIONS, json=body, headers={"Authorization": "Bearer no"})
        assert_openai_error(wrong, 401)
        ok = await http.post(COMPLETIONS, json=body, headers={"Authorization": "Bearer k-one"})
        assert ok.status_code == 200, ok.text
    assert len(warm.requests) == 1
