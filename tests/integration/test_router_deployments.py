"""The deployments API and the model list, through the router with a stand-in scheduler."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from libs.cluster import ClusterState
from libs.protocol import Bus
from libs.protocol.events import DeploymentEvent

from .router_stubs import (
    RunningRouter,
    StubScheduler,
    ready_instance,
)

pytestmark = pytest.mark.integration

NAME = "org/llama-tiny"
SPEC = {
    "name": NAME,
    "checkpoint_uri": "file:///models/llama-tiny",
    "min_instances": 0,
    "max_instances": 2,
    "keep_alive_s": 30,
    "target_concurrency": 4,
}


@pytest.fixture
async def scheduler(bus: Bus, state: ClusterState) -> StubScheduler:
    return await StubScheduler(bus, state).serve()


async def test_deployment_lifecycle(
    scheduler: StubScheduler, state: ClusterState, http: httpx.AsyncClient
) -> None:
    created = await http.post("/v1/deployments", json=SPEC)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["object"] == "deployment"
    assert {k: body[k] for k in SPEC} == {**SPEC, "keep_alive_s": 30.0}
    assert body["created_at"] > 0
    assert body["instances"] == []
    assert (await state.get_deployment(NAME)) is not None

    assert body["status"] == "ready"
    assert body["error"] == ""

    # A second create of the name is a 409 naming the way to change it.
    again = await http.post("/v1/deployments", json={**SPEC, "max_instances": 3})
    assert again.status_code == 409, again.text
    assert again.json()["error"]["code"] == "deployment_exists"
    assert f"PATCH /v1/deployments/{NAME}" in again.json()["error"]["message"]

    updated = await http.patch(f"/v1/deployments/{NAME}", json={"max_instances": 3})
    assert updated.status_code == 200, updated.text
    assert updated.json()["max_instances"] == 3
    assert updated.json()["min_instances"] == SPEC["min_instances"]
    assert updated.json()["created_at"] == body["created_at"]
    stored = await state.get_deployment(NAME)
    assert stored is not None
    assert stored.max_instances == 3

    await ready_instance(state, model=NAME, instance_id="i-7", worker_id="w3")
    one = await http.get(f"/v1/deployments/{NAME}")
    assert one.status_code == 200
    (inst,) = one.json()["instances"]
    assert (inst["instance_id"], inst["status"], inst["worker_id"], inst["node_id"]) == (
        "i-7",
        "ready",
        "w3",
        "node-0",
    )

    listed = await http.get("/v1/deployments")
    assert listed.json()["object"] == "list"
    assert [d["name"] for d in listed.json()["data"]] == [NAME]

    deleted = await http.delete(f"/v1/deployments/{NAME}")
    assert deleted.status_code == 200
    assert deleted.json() == {
        "object": "deployment.deleted",
        "name": NAME,
        "deleted": True,
        "stopped_instances": ["i-7"],
    }
    assert await state.get_deployment(NAME) is None
    assert await state.instances(NAME) == []
    for resp in (
        await http.get(f"/v1/deployments/{NAME}"),
        await http.delete(f"/v1/deployments/{NAME}"),
    ):
        assert resp.status_code == 404
        assert NAME in resp.json()["error"]["message"]


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"min_instances": 3, "max_instances": 1}, "min_instances"),
        ({"name": "bad name!"}, "name"),
        ({"checkpoint_uri": None}, "checkpoint_uri"),
        ({"max_instances": 0}, "max_instances"),
        ({"keep_alive_s": "soon"}, "keep_alive_s"),
        ({"surprise": 1}, "surprise"),
    ],
)
async def test_invalid_deployments_are_400(
    scheduler: StubScheduler, http: httpx.AsyncClient, change: dict[str, object], param: str
) -> None:
    spec = {k: v for k, v in {**SPEC, **change}.items() if v is not None}
    resp = await http.post("/v1/deployments", json=spec)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param


async def test_deploy_without_a_scheduler_is_503(router: RunningRouter) -> None:
    async with httpx.AsyncClient(base_url=router.url, timeout=20) as http:
        resp = await http.post("/v1/deployments", json=SPEC)
    assert resp.status_code == 503
    assert resp.json()["error"]["code"] == "no_responders"


async def test_models_list_through_openai_client(
    scheduler: StubScheduler, router: RunningRouter, http: httpx.AsyncClient
) -> None:
    await http.post("/v1/deployments", json=SPEC)
    await http.post("/v1/deployments", json={**SPEC, "name": "other"})
    async with openai.AsyncOpenAI(base_url=router.v1, api_key="x", max_retries=0) as client:
        models = [m async for m in client.models.list()]
        assert sorted(m.id for m in models) == sorted([NAME, "other"])
        assert all(m.object == "model" and m.owned_by == "sllm" for m in models)
        model = await client.models.retrieve(NAME)
        assert model.id == NAME
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("absent")


async def test_concurrent_creates_of_one_name_one_wins_the_other_is_409(
    scheduler: StubScheduler, state: ClusterState, http: httpx.AsyncClient
) -> None:
    bodies = [{**SPEC, "max_instances": n} for n in (1, 2, 3, 4, 5, 6)]
    answers = await asyncio.gather(*(http.post("/v1/deployments", json=b) for b in bodies))
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [201, 409, 409, 409, 409, 409], [a.text for a in answers]
    (won,) = [a.json() for a in answers if a.status_code == 201]
    stored = await state.get_deployment(NAME)
    assert stored is not None
    assert stored.max_instances == won["max_instances"]


@pytest.mark.parametrize(
    ("patch", "status", "param"),
    [
        ({"min_instances": 5}, 400, "min_instances"),  # above max_instances (2)
        ({"checkpoint_uri": "file:///models/other"}, 422, "checkpoint_uri"),
        ({"name": "renamed"}, 400, "name"),
        ({"keep_alive_s": "soon"}, 400, "keep_alive_s"),
        ({"max_instances": 0}, 400, "max_instances"),
    ],
)
async def test_bad_patches_are_refused_naming_the_field(
    scheduler: StubScheduler,
    state: ClusterState,
    http: httpx.AsyncClient,
    patch: dict[str, object],
    status: int,
    param: str,
) -> None:
    assert (await http.post("/v1/deployments", json=SPEC)).status_code == 201
    resp = await http.patch(f"/v1/deployments/{NAME}", json=patch)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["param"] == param
    stored = await state.get_deployment(NAME)
    assert stored is not None
    assert stored.max_instances == SPEC["max_instances"]


async def test_patch_of_an_unknown_deployment_is_404_and_same_uri_is_fine(
    scheduler: StubScheduler, http: httpx.AsyncClient
) -> None:
    resp = await http.patch("/v1/deployments/absent", json={"max_instances": 2})
    assert resp.status_code == 404
    assert (await http.post("/v1/deployments", json=SPEC)).status_code == 201
    same = {"checkpoint_uri": SPEC["checkpoint_uri"], "keep_alive_s": 5}
    resp = await http.patch(f"/v1/deployments/{NAME}", json=same)
    assert resp.status_code == 200, resp.text
    assert resp.json()["keep_alive_s"] == 5.0


@pytest.mark.parametrize("field", ["status", "error"])
async def test_a_client_cannot_set_the_status(
    scheduler: StubScheduler, http: httpx.AsyncClient, field: str
) -> None:
    resp = await http.post("/v1/deployments", json={**SPEC, field: "ready"})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == field


async def test_a_failed_deployment_refuses_requests_at_once_with_its_reason(
    scheduler: StubScheduler,
    state: ClusterState,
    bus: Bus,
    router: RunningRouter,
    http: httpx.AsyncClient,
) -> None:
    assert (await http.post("/v1/deployments", json=SPEC)).status_code == 201
    reason = "checkpoint file:///models/llama-tiny: it has no tokenizer"
    # As the scheduler marks a preparation that failed: the record, then the news.
    await state.update_deployment(NAME, status="failed", error=reason)
    await bus.emit(DeploymentEvent(name=NAME, action="updated"))
    listed = await http.get(f"/v1/deployments/{NAME}")
    assert (listed.json()["status"], listed.json()["error"]) == ("failed", reason)
    async with openai.AsyncOpenAI(base_url=router.v1, api_key="x", max_retries=0) as client:
        for _ in range(50):  # until the router has the news (its cache's TTL at the latest)
            t0 = time.monotonic()
            try:
                await client.chat.completions.create(
                    model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=2
                )
            except openai.APIStatusError as exc:
                if exc.status_code == 424:
                    caught = exc
                    break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the failed deployment was never refused with a 424")
        assert time.monotonic() - t0 < 5.0
    assert reason in caught.message
