"""The scheduler's deploy logic on a real Valkey and NATS: a preparation its scheduler did not
finish is taken up again, and a change of status is never lost to a concurrent PATCH."""

from __future__ import annotations

import asyncio

import pytest

from libs.cluster import ClusterState
from libs.protocol import Bus
from libs.protocol.messages import DeploymentSpec, DeployRequest, PatchDeploymentRequest
from services.scheduler.deployer import DeployConfig, Deployer
from services.scheduler.deployment_book import DeploymentBook

pytestmark = pytest.mark.integration


def _deployer(bus: Bus, state: ClusterState, replicas: int = 0) -> Deployer:
    config = DeployConfig(prefetch_replicas=replicas, prefetch_timeout=1.0, inspect_timeout=2.0)
    return Deployer(bus, state, DeploymentBook(), config, lambda: None)


async def test_a_deployment_left_preparing_by_a_dead_scheduler_is_prepared_again(
    bus: Bus, state: ClusterState
) -> None:
    # As a scheduler that stored it and died before its preparation ended.
    spec = DeploymentSpec(name="m", checkpoint_uri="file:///m", status="preparing")
    assert await state.create_deployment(spec)
    deployer = _deployer(bus, state)
    stored = await state.deployments()
    await deployer.resume_stuck(stored, now=100.0)  # first seen: not yet stuck
    before = await state.get_deployment("m")
    assert before is not None
    assert before.status == "preparing"
    limit = deployer.config.prefetch_timeout * 2 + 30.0
    await deployer.resume_stuck(stored, now=100.0 + limit)
    status = ""
    for _ in range(100):
        got = await state.get_deployment("m")
        status = got.status if got is not None else "gone"
        if status == "ready":
            break
        await asyncio.sleep(0.05)
    assert status == "ready"


async def test_patches_and_status_changes_at_once_lose_nothing(
    bus: Bus, state: ClusterState
) -> None:
    deployer = _deployer(bus, state)
    spec = DeploymentSpec(name="p", checkpoint_uri="file:///p", max_instances=64)
    await deployer.deploy(DeployRequest(spec=spec, mode="create", check=False))
    await asyncio.gather(
        *(deployer.patch(PatchDeploymentRequest(name="p", min_instances=n)) for n in range(1, 33)),
        *(state.update_deployment("p", error=f"e{n}") for n in range(32)),
        deployer.patch(PatchDeploymentRequest(name="p", keep_alive_s=9.0)),
    )
    got = await state.get_deployment("p")
    assert got is not None
    assert got.keep_alive_s == 9.0  # not overwritten by the other writers
    assert 1 <= got.min_instances <= 32
    assert got.error.startswith("e")
