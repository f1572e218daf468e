"""``python -m tests.integration.silent_worker``: a worker process that lives (heartbeat, ``info``
endpoint, registered worker) but never finishes what it is asked: it accepts loads and never
reports them ready, and it never answers a migration or an unload. Tests `kill -9` it to see
whether a wait on it follows its life. ``SLLM_INSTANCE_ID`` is its worker id,
``SLLM_NODE_ID`` its node."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import ClassVar

from libs.cluster import ClusterState
from libs.common.service import Service, ServiceKind, run_service
from libs.common.settings import CommonSettings
from libs.protocol import Route, route
from libs.protocol.endpoints import WORKER_LOAD, WORKER_MIGRATE, WORKER_UNLOAD
from libs.protocol.messages import (
    LoadReply,
    LoadRequest,
    MigrateReply,
    MigrateRequest,
    UnloadReply,
    UnloadRequest,
)


class SilentWorker(Service):
    kind: ClassVar[ServiceKind] = "worker"

    async def on_start(self) -> None:
        await ClusterState(self.redis, self.keys).register_worker(
            self.instance_id, self.node_id, "cpu"
        )

    def routes(self) -> list[Route]:
        wid = self.instance_id
        return [
            *super().routes(),
            route(WORKER_LOAD, self.load, worker_id=wid),
            route(WORKER_MIGRATE, self.migrate, worker_id=wid),
            route(WORKER_UNLOAD, self.unload, worker_id=wid),
        ]

    async def load(self, req: LoadRequest) -> LoadReply:
        return LoadReply(instance_id=req.instance_id, worker_id=self.instance_id)

    async def migrate(self, req: MigrateRequest) -> MigrateReply:
        await asyncio.Event().wait()  # never
        raise AssertionError("unreachable")

    async def unload(self, req: UnloadRequest) -> UnloadReply:
        await asyncio.Event().wait()  # never
        raise AssertionError("unreachable")


def build() -> SilentWorker:
    settings = CommonSettings.from_env()
    return SilentWorker(
        settings, instance_id=settings.instance_id, node_id=os.environ["SLLM_NODE_ID"]
    )


if __name__ == "__main__":
    sys.exit(run_service(build))
