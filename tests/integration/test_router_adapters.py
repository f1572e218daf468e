"""The router serves a LoRA adapter on its base, against real NATS and Redis with a stand-in
worker: the worker is asked for the base with the adapter named, the client sees the adapter's
name, and the demand the autoscaler reads is the base's."""

from __future__ import annotations

import asyncio
import time

import openai
import pytest

from libs.cluster import ClusterState
from libs.protocol import Bus
from libs.protocol.messages import DemandReport, DeploymentSpec

from .router_stubs import MODEL, RunningRouter, StubWorker

pytestmark = pytest.mark.integration


async def test_an_adapter_request_goes_to_its_base_and_counts_as_its_demand(
    warm: StubWorker, router: RunningRouter, state: ClusterState, bus: Bus
) -> None:
    adapter = DeploymentSpec(
        name="lora-x", checkpoint_uri="file:///adapters/x", base=MODEL, created_at=time.time()
    )
    await state.put_deployment(adapter)
    reports: list[DemandReport] = []

    async def on_report(report: DemandReport) -> None:
        reports.append(report)

    await bus.subscribe(bus.subjects.demand, DemandReport, on_report)
    warm.delay = 0.2  # long enough for a demand report while it streams
    async with openai.AsyncOpenAI(base_url=router.v1, api_key="x", max_retries=0) as client:
        resp = await client.completions.create(model="lora-x", prompt="hi", max_tokens=3)
        models = {m.id: m for m in (await client.models.list()).data}
    assert resp.model == "lora-x"
    (req,) = warm.requests
    assert (req.model, req.adapter, req.adapter_uri) == (MODEL, "lora-x", "file:///adapters/x")
    await asyncio.sleep(0.1)
    busy = [r.models for r in reports if r.models]
    assert busy
    assert all(set(m) == {MODEL} for m in busy), busy
    assert (models["lora-x"].model_extra or {}).get("parent") == MODEL


async def test_an_adapter_whose_base_is_gone_is_a_424(
    warm: StubWorker, router: RunningRouter, state: ClusterState
) -> None:
    orphan = DeploymentSpec(name="lora-o", checkpoint_uri="file:///a/o", base="gone")
    await state.put_deployment(orphan)
    async with openai.AsyncOpenAI(base_url=router.v1, api_key="x", max_retries=0) as client:
        with pytest.raises(openai.APIStatusError, match="gone") as err:
            await client.completions.create(model="lora-o", prompt="hi", max_tokens=3)
    assert err.value.status_code == 424
    assert warm.requests == []
