"""The private bus: a real nats-server with one user per role (the credentials `sllm up` and
`sllm credentials` generate). Nobody without credentials gets in; each role may only do its
own part: only the scheduler can order a worker to load or unload."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from libs.cli.credentials import Credentials, read_env_file, write_bundle
from libs.common.embedded import EmbeddedNats
from libs.common.server_config import NatsUser, ServerConfigError
from libs.protocol import Bus, route
from libs.protocol.endpoints import SCHED_DEPLOY, WORKER_GENERATE, WORKER_LOAD, WORKER_UNLOAD
from libs.protocol.errors import BusError, CredentialsError
from libs.protocol.messages import (
    DeploymentSpec,
    DeployReply,
    DeployRequest,
    LoadReply,
    LoadRequest,
    UnloadReply,
    UnloadRequest,
)
from libs.protocol.permissions import ROLES

pytestmark = pytest.mark.integration

ROOT = "authtest"


@pytest.fixture(scope="module")
def creds() -> Credentials:
    return Credentials.generate()


@pytest.fixture(scope="module")
def server(creds: Credentials) -> Iterator[EmbeddedNats]:
    with EmbeddedNats(users=creds.nats_users(ROOT)) as s:
        assert isinstance(s, EmbeddedNats)
        yield s


@pytest.fixture
async def as_role(server: EmbeddedNats) -> AsyncIterator[dict[str, Bus]]:
    buses: dict[str, Bus] = {
        role: await Bus.connect(server.url_for(role), name=role, root=ROOT, request_timeout=1)
        for role in ROLES
    }
    yield buses
    for bus in buses.values():
        await bus.close()


class Worker:
    def __init__(self) -> None:
        self.loads: list[str] = []

    async def load(self, req: LoadRequest) -> LoadReply:
        self.loads.append(req.instance_id)
        return LoadReply(instance_id=req.instance_id, worker_id="w0")

    async def unload(self, req: UnloadRequest) -> UnloadReply:
        self.loads.remove(req.instance_id)
        return UnloadReply(instance_id=req.instance_id, freed=True)


async def test_no_credentials_or_a_wrong_password_is_refused_clearly(
    server: EmbeddedNats, creds: Credentials
) -> None:
    with pytest.raises(CredentialsError, match="refused the credentials"):
        await Bus.connect(server.url, name="bare", root=ROOT, connect_timeout=2)
    wrong = server.url.replace("nats://", "nats://router:not-the-password@")
    with pytest.raises(CredentialsError) as info:
        await Bus.connect(wrong, name="guess", root=ROOT, connect_timeout=2)
    assert "not-the-password" not in str(info.value)  # credentials never echoed
    assert creds.nats["router"] not in str(info.value)


async def test_only_the_scheduler_orders_loads_and_unloads(as_role: dict[str, Bus]) -> None:
    worker = Worker()
    await as_role["worker"].serve(
        "worker",
        [
            route(WORKER_LOAD, worker.load, worker_id="w0"),
            route(WORKER_UNLOAD, worker.unload, worker_id="w0"),
        ],
    )
    load = LoadRequest(instance_id="i-forged", model="m", checkpoint_uri="file:///m")
    for role in ("router", "storage", "worker"):
        with pytest.raises(BusError):  # the server drops the publish: nothing answers
            await as_role[role].request(WORKER_LOAD, load, worker_id="w0", timeout=0.5)
    assert worker.loads == []
    granted = LoadRequest(instance_id="i-1", model="m", checkpoint_uri="file:///m")
    reply = await as_role["scheduler"].request(WORKER_LOAD, granted, worker_id="w0")
    assert reply.instance_id == "i-1"
    assert worker.loads == ["i-1"]
    with pytest.raises(BusError):
        await as_role["router"].request(
            WORKER_UNLOAD, UnloadRequest(instance_id="i-1"), worker_id="w0", timeout=0.5
        )
    assert worker.loads == ["i-1"]


async def test_a_router_cannot_pose_as_a_worker_or_deploy_as_storage(
    as_role: dict[str, Bus],
) -> None:
    served: list[str] = []

    async def deploy(req: DeployRequest) -> DeployReply:  # pragma: no cover - never runs
        served.append(req.spec.name)
        return DeployReply(spec=req.spec, created=True)

    await as_role["scheduler"].serve("scheduler", [route(SCHED_DEPLOY, deploy)])
    spec = DeploymentSpec(name="m", checkpoint_uri="file:///m")
    with pytest.raises(BusError):
        await as_role["storage"].request(SCHED_DEPLOY, DeployRequest(spec=spec), timeout=0.5)
    assert served == []
    # A router subscribing to a worker's generate subject receives nothing.
    got: list[bytes] = []

    async def on_msg(msg: object) -> None:
        got.append(b"x")

    await as_role["router"].nc.subscribe(WORKER_GENERATE.subject(ROOT, worker_id="w9"), cb=on_msg)
    await as_role["admin"].nc.publish(WORKER_GENERATE.subject(ROOT, worker_id="w9"), b"{}")
    await as_role["admin"].nc.flush()
    await asyncio.sleep(0.3)
    assert got == []


def test_the_compose_bundle_holds_one_user_per_role_and_private_files(tmp_path: Path) -> None:
    written = write_bundle(tmp_path, root=ROOT, nats_address="nats:4222", redis_address="r:6379")
    assert {p.name for p in written} >= {
        "nats-auth.conf",
        "redis-acl.conf",
        "redis-password",
        "credentials.env",
        *(f"{role}.nats-url" for role in ROLES),
        *(f"{role}.redis-url" for role in ROLES),
    }
    for path in written:
        assert path.stat().st_mode & 0o777 == 0o600, path
    conf = (tmp_path / "nats-auth.conf").read_text()
    for role in ROLES:
        url = (tmp_path / f"{role}.nats-url").read_text().strip()
        user, password = url.removeprefix("nats://").split("@")[0].split(":")
        assert user == role
        assert f'password: "{password}"' in conf
    assert read_env_file(tmp_path / "credentials.env")["SLLM_NATS_URL"].startswith("nats://admin:")
    # A second run keeps what is there (services hold these passwords).
    assert write_bundle(tmp_path, root=ROOT, nats_address="n:1", redis_address="r:1") == []


class BundleNats(EmbeddedNats):
    """nats-server started with a bundle's ``nats-auth.conf``, as compose starts it."""

    def __init__(self, config: Path) -> None:
        super().__init__()
        self.config = config

    def argv(self) -> list[str]:
        return [*super().argv()[:1], "-c", str(self.config), *super().argv()[1:]]


async def test_the_bundles_config_runs_a_real_nats_server(tmp_path: Path) -> None:
    write_bundle(tmp_path, root=ROOT, nats_address="nats:4222", redis_address="r:6379")
    with BundleNats(tmp_path / "nats-auth.conf") as server:
        address = f"{server.host}:{server.port}"
        buses = {}
        for role in ROLES:
            url = (tmp_path / f"{role}.nats-url").read_text().strip()
            buses[role] = await Bus.connect(
                url.replace("nats:4222", address), name=role, root=ROOT, request_timeout=1
            )
        worker = Worker()
        await buses["worker"].serve("worker", [route(WORKER_LOAD, worker.load, worker_id="w0")])
        load = LoadRequest(instance_id="i-1", model="m", checkpoint_uri="file:///m")
        with pytest.raises(BusError):
            await buses["router"].request(WORKER_LOAD, load, worker_id="w0", timeout=0.5)
        await buses["scheduler"].request(WORKER_LOAD, load, worker_id="w0")
        assert worker.loads == ["i-1"]
        for bus in buses.values():
            await bus.close()
    with pytest.raises(ServerConfigError):
        NatsUser("bad user", "x")  # credentials go into URLs as they are
