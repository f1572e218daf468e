"""The deployments API and the model list, through the router with a stand-in scheduler."""

from __future__ import annotations

import httpx
import openai
import pytest

from libs.cluster import ClusterState
from libs.protocol import Bus

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

    updated = await http.post("/v1/deployments", json={**SPEC, "max_instances": 3})
    assert updated.status_code == 200
    assert updated.json()["max_instances"] == 3
    assert updated.json()["created_at"] == body["created_at"]

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
