"""A node's services for integration tests: a service as a child process of its own, which a
test can `kill -9` and start again as `sllm up` would; the settings a storage service or a
worker gets on the test's NATS and Valkey; a real worker in the test's process; and the
scheduler's part of a load (the instance recorded, the worker reserved, the load asked)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType

import pytest

from libs.cluster import ClusterState
from libs.common.embedded import EmbeddedNats, EmbeddedRedis
from libs.protocol import Bus
from libs.protocol.endpoints import WORKER_LOAD
from libs.protocol.messages import LoadRequest
from libs.protocol.state import InstanceRecord
from services.worker.app import WorkerService
from services.worker.settings import WorkerSettings

REPO = Path(__file__).resolve().parents[2]
# Heartbeats fast enough that a `kill -9` is noticed within about a second and a half.
FAST_HEARTBEAT = {"SLLM_HEARTBEAT_INTERVAL": "0.2", "SLLM_HEARTBEAT_TTL": "2"}


def service_env(nats_url: str, redis_url: str, root: str, **env: str) -> dict[str, str]:
    """A service's settings on the test's NATS and Redis under ``root``; ``env``: more
    ``SLLM_*`` settings."""
    return {"SLLM_NATS_URL": nats_url, "SLLM_REDIS_URL": redis_url, "SLLM_ROOT": root, **env}


def storage_env(
    nats_url: str,
    redis_url: str,
    root: str,
    *,
    node: str,
    ssd: Path,
    dram: Path,
    allow: str,
    **env: str,
) -> dict[str, str]:
    """A storage service's settings for ``node``: its tiers in ``ssd`` and ``dram``, no
    bandwidth probe (its temp file would show in the tiers), registries ``allow``-ed."""
    return service_env(
        nats_url,
        redis_url,
        root,
        SLLM_NODE_ID=node,
        SLLM_SSD_DIR=str(ssd),
        SLLM_DRAM_DIR=str(dram),
        SLLM_BANDWIDTH_PROBE_MB="0",
        SLLM_REGISTRY_ALLOW=allow,
        **env,
    )


class ServiceProcess:
    """``python -m <module>`` as a process of its own (the repository's, with the test's
    ``SLLM_*`` settings only), started (again) and killed with SIGKILL; its output is
    appended to ``log``. As a context manager: killed, if it still runs, at the end."""

    def __init__(self, module: str, env: dict[str, str], log: Path) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("SLLM_")}
        self.module = module
        self.env = {**base, **env, "PYTHONUNBUFFERED": "1"}
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, **env: str) -> None:
        """Start it; ``env``: settings of this run only."""
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module],
                env={**self.env, **env},
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()


@contextlib.asynccontextmanager
async def running_worker(
    nats_url: str, redis_url: str, root: str, *, worker_id: str, node: str, load_timeout_s: float
) -> AsyncIterator[WorkerService]:
    """A real worker ``worker_id`` on ``node`` in this process, with fast heartbeats."""
    env = service_env(
        nats_url,
        redis_url,
        root,
        SLLM_INSTANCE_ID=worker_id,
        SLLM_NODE_ID=node,
        **FAST_HEARTBEAT,
        SLLM_LOAD_TIMEOUT=str(load_timeout_s),
    )
    svc = WorkerService(WorkerSettings.from_env(env))
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop("test over")


def worker_fixture(worker_id: str, node: str, *, load_timeout_s: float) -> object:
    """A ``worker`` fixture for a test module: `running_worker` with these settings.
    ``worker = worker_fixture(...)`` at module level is where pytest finds it."""

    @pytest.fixture
    async def worker(
        nats_server: EmbeddedNats, redis_server: EmbeddedRedis, root: str
    ) -> AsyncIterator[WorkerService]:
        async with running_worker(
            nats_server.url,
            redis_server.url,
            root,
            worker_id=worker_id,
            node=node,
            load_timeout_s=load_timeout_s,
        ) as svc:
            yield svc

    return worker


async def reserve_for_load(
    state: ClusterState, *, iid: str, model: str, worker_id: str, node: str
) -> None:
    """What the scheduler does before a load: the instance recorded as loading on
    ``worker_id``, and that worker reserved for it."""
    await state.put_instance(
        InstanceRecord(
            instance_id=iid,
            model=model,
            worker_id=worker_id,
            node_id=node,
            status="loading",
            created_at=time.time(),
        )
    )
    assert await state.reserve_worker(worker_id, iid)


async def request_load(
    bus: Bus, state: ClusterState, *, iid: str, model: str, worker_id: str, node: str, uri: str
) -> None:
    """`reserve_for_load`, then the load asked of the worker."""
    await reserve_for_load(state, iid=iid, model=model, worker_id=worker_id, node=node)
    await bus.request(
        WORKER_LOAD,
        LoadRequest(instance_id=iid, model=model, checkpoint_uri=uri),
        worker_id=worker_id,
        timeout=10,
    )
