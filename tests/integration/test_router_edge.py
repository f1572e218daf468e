"""The router's edge: admin vs inference vs metrics keys, the registry allow-list at deploy
time, and the body limit on every route (with the router's memory flat under a 400 MB body)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import openai
import pytest

from libs.cluster import ClusterState
from libs.protocol import Bus

from .probes import peak_rss
from .router_stubs import MODEL, StubScheduler, StubWorker, router_settings, running_router
from .test_router import assert_openai_error

pytestmark = pytest.mark.integration

INFER, ADMIN, METRICS = "k-infer", "k-admin", "k-metrics"
SPEC = {"name": "edge/model", "checkpoint_uri": "file:///models/edge"}
TIMEOUT = httpx.Timeout(30.0)


def bearer(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


@pytest.fixture
async def scheduler(bus: Bus, state: ClusterState) -> StubScheduler:
    return await StubScheduler(bus, state).serve()


# --- keys -----------------------------------------------------------------------------------


async def test_admin_inference_and_metrics_keys_each_open_their_own_routes(
    nats_server, redis_server, root: str, scheduler: StubScheduler, state: ClusterState,
    warm: StubWorker,
) -> None:  # fmt: skip
    settings = router_settings(
        nats_server.url, redis_server.url, root,
        SLLM_API_KEYS=INFER, SLLM_ADMIN_KEYS=ADMIN, SLLM_METRICS_KEYS=METRICS,
    )  # fmt: skip
    async with (
        running_router(settings) as router,
        httpx.AsyncClient(base_url=router.url, timeout=TIMEOUT) as http,
    ):
        deploy = "/v1/deployments"
        assert assert_openai_error(await http.post(deploy, json=SPEC), 401)["code"] == (
            "invalid_api_key"
        )
        for key in (INFER, METRICS):
            for method, path in (
                ("POST", deploy),
                ("GET", deploy),
                ("GET", f"{deploy}/{MODEL}"),
                ("DELETE", f"{deploy}/{MODEL}"),
            ):
                resp = await http.request(method, path, json=SPEC, headers=bearer(key))
                error = assert_openai_error(resp, 403)
                assert (error["type"], error["code"]) == ("permission_error", "permission_denied")
        assert_openai_error(await http.post(deploy, json=SPEC, headers=bearer("nope")), 401)
        assert await state.get_deployment(SPEC["name"]) is None
        created = await http.post(deploy, json=SPEC, headers=bearer(ADMIN))
        assert created.status_code == 201, created.text

        # Inference: inference and admin keys, not the metrics key.
        checks: tuple[tuple[str | None, int], ...] = (
            (None, 401),
            ("nope", 401),
            (METRICS, 403),
            (INFER, 200),
        )
        for given, status in checks:
            resp = await http.get("/v1/models", headers=bearer(given))
            assert resp.status_code == status, (given, resp.text)
        assert (await http.get("/v1/models", headers=bearer(ADMIN))).status_code == 200
        # /metrics: metrics and admin keys, not inference keys; /health stays open.
        checks = ((None, 401), (INFER, 403), (METRICS, 200), (ADMIN, 200))
        for given, status in checks:
            resp = await http.get("/metrics", headers=bearer(given))
            assert resp.status_code == status, (given, resp.text)
        assert (await http.get("/health")).status_code == 200

        async with openai.AsyncOpenAI(base_url=router.v1, api_key=INFER, max_retries=0) as c:
            reply = await c.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "x"}]
            )
            assert reply.choices[0].message.content == "Hello, world!"
            with pytest.raises(openai.PermissionDeniedError, match="admin"):
                await c.post("/deployments", body=SPEC, cast_to=httpx.Response)
        async with openai.AsyncOpenAI(base_url=router.v1, api_key=ADMIN, max_retries=0) as c:
            assert MODEL in [m.id async for m in c.models.list()]


async def test_inference_keys_without_admin_keys_close_the_admin_api(
    nats_server, redis_server, root: str, scheduler: StubScheduler, state: ClusterState
) -> None:
    settings = router_settings(nats_server.url, redis_server.url, root, SLLM_API_KEYS=INFER)
    async with (
        running_router(settings) as router,
        httpx.AsyncClient(base_url=router.url, timeout=TIMEOUT) as http,
    ):
        assert_openai_error(await http.post("/v1/deployments", json=SPEC), 401)
        resp = await http.post("/v1/deployments", json=SPEC, headers=bearer(INFER))
        assert "SLLM_ADMIN_KEYS" in str(assert_openai_error(resp, 403)["message"])
        assert (await http.get("/v1/models", headers=bearer(INFER))).status_code == 200
        assert (await http.get("/metrics")).status_code == 200  # no metrics keys: open
    assert await state.get_deployment(SPEC["name"]) is None


async def test_admin_keys_alone_leave_inference_open(
    nats_server, redis_server, root: str, scheduler: StubScheduler
) -> None:
    settings = router_settings(nats_server.url, redis_server.url, root, SLLM_ADMIN_KEYS=ADMIN)
    async with (
        running_router(settings) as router,
        httpx.AsyncClient(base_url=router.url, timeout=TIMEOUT) as http,
    ):
        assert (await http.get("/v1/models")).status_code == 200
        assert_openai_error(await http.get("/v1/deployments"), 401)
        ok = await http.post("/v1/deployments", json=SPEC, headers=bearer(ADMIN))
        assert ok.status_code == 201, ok.text


# --- the registry allow-list ----------------------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        "file:///etc/passwd",
        "file:///proc/self/environ",
        "file:///models/../etc/passwd",
        "file:///models/%2e%2e/etc/passwd",
        "http://127.0.0.1:6379/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:4222/",
        "http://[fe80::1]/",
        "http://2130706433/",
        "s3://bucket/model",
    ],
)
async def test_a_checkpoint_uri_outside_the_allow_list_is_400_and_nothing_is_stored(
    scheduler: StubScheduler, state: ClusterState, http: httpx.AsyncClient, uri: str
) -> None:
    resp = await http.post("/v1/deployments", json={**SPEC, "checkpoint_uri": uri})
    error = assert_openai_error(resp, 400)
    assert error["param"] == "checkpoint_uri"
    assert str(error["message"]).startswith("checkpoint_uri: ")
    assert await state.get_deployment(SPEC["name"]) is None
    assert (await http.get("/v1/deployments")).json()["data"] == []


async def test_a_url_prefix_in_the_allow_list_may_be_deployed(
    nats_server, redis_server, root: str, scheduler: StubScheduler, state: ClusterState
) -> None:
    allow = "/models,https://hub.example.com/ckpt/"
    settings = router_settings(nats_server.url, redis_server.url, root, SLLM_REGISTRY_ALLOW=allow)
    async with (
        running_router(settings) as router,
        httpx.AsyncClient(base_url=router.url, timeout=TIMEOUT) as http,
    ):
        uri = "https://hub.example.com/ckpt/llama/"
        ok = await http.post("/v1/deployments", json={**SPEC, "checkpoint_uri": uri})
        assert ok.status_code == 201, ok.text
        other = await http.post(
            "/v1/deployments", json={**SPEC, "checkpoint_uri": "https://hub.example.com/x/"}
        )
        assert_openai_error(other, 400)
    spec = await state.get_deployment(SPEC["name"])
    assert spec is not None
    assert spec.checkpoint_uri == uri


# --- body limits ----------------------------------------------------------------------------

LIMIT = 64 << 10


@pytest.fixture
async def small_limit(nats_server, redis_server, root: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = router_settings(
        nats_server.url, redis_server.url, root, SLLM_MAX_BODY_BYTES=str(LIMIT)
    )
    async with (
        running_router(settings) as router,
        httpx.AsyncClient(base_url=router.url, timeout=TIMEOUT) as http,
    ):
        yield http


async def _chunks(total: int, size: int = 1 << 20) -> AsyncIterator[bytes]:
    block = b"x" * size
    sent = 0
    while sent < total:
        yield block[: min(size, total - sent)]
        sent += size


async def test_every_route_refuses_a_body_over_the_limit_with_413(
    small_limit: httpx.AsyncClient,
) -> None:
    http = small_limit
    schema = (await http.get("/openapi.json")).json()
    routes = [
        (method.upper(), path.replace("{model}", "m").replace("{name}", "n"))
        for path, ops in schema["paths"].items()
        for method in ops
    ]
    routes += [("GET", "/openapi.json"), ("GET", "/docs"), ("PUT", "/no/such/route")]
    assert len(routes) >= 12
    for method, path in routes:
        sized = await http.request(method, path, content=b"x" * (LIMIT + 1))
        error = assert_openai_error(sized, 413)
        assert (error["code"], error["type"]) == ("too_large", "invalid_request_error")
        assert str(LIMIT) in str(error["message"])
        chunked = await http.request(method, path, content=_chunks(LIMIT + 1, 4096))
        assert_openai_error(chunked, 413)
    # A body at the limit is read and answered as usual.
    at_limit = await http.post("/v1/deployments", content=b"{" + b" " * (LIMIT - 2) + b"}")
    assert_openai_error(at_limit, 400)
    assert (await http.get("/health")).status_code == 200


async def test_a_400_mb_streamed_body_is_refused_and_router_memory_stays_flat(
    router, http: httpx.AsyncClient
) -> None:
    total = 400 << 20
    for path in ("/v1/deployments", "/v1/chat/completions"):
        with peak_rss() as growth:
            resp = await http.post(path, content=_chunks(total))
        assert_openai_error(resp, 413)
        # The router buffers at most SLLM_MAX_BODY_BYTES (4 MiB); before the limit, a body
        # this size drove the router to 1.26 GB.
        assert growth[0] < 48 << 20, f"{path}: RSS grew by {growth[0] >> 20} MiB"
    assert (await http.get("/health")).status_code == 200
