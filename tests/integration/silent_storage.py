"""``python -m tests.integration.silent_storage``: a node's storage service reduced to its
``ensure``, in a process of its own (heartbeat, ``info``), for tests that `kill -9` it.

It answers an SSD-tier ensure at once with the checkpoint at ``SLLM_TEST_CHECKPOINT`` (an SSD
copy: a worker that loads it then asks for a DRAM copy). A DRAM-tier ensure is answered only
with ``SLLM_TEST_ANSWER_DRAM=1``; otherwise it never is. Every ensure is recorded as it
arrives: ``<SLLM_TEST_NAME> <tier>`` pushed onto the Redis list `record_key`."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import ClassVar

from libs.common.service import Service, ServiceKind, run_service
from libs.common.settings import CommonSettings
from libs.protocol import Route, route
from libs.protocol.endpoints import STORAGE_ENSURE
from libs.protocol.messages import EnsureReply, EnsureRequest


class SilentStorage(Service):
    kind: ClassVar[ServiceKind] = "storage"

    def routes(self) -> list[Route]:
        return [*super().routes(), route(STORAGE_ENSURE, self.ensure, node_id=self.node_id)]

    async def ensure(self, req: EnsureRequest) -> EnsureReply:
        await self.redis.rpush(
            record_key(self.settings.root), f"{os.environ['SLLM_TEST_NAME']} {req.tier}"
        )
        if req.tier == "dram" and os.environ.get("SLLM_TEST_ANSWER_DRAM") != "1":
            await asyncio.Event().wait()  # never
        return EnsureReply(
            model=req.model,
            path=os.environ["SLLM_TEST_CHECKPOINT"],
            tier=req.tier,
            source_tier="ssd",
            bytes=1,
            seconds=0.0,
        )


def record_key(root: str) -> str:
    """Where the stand-in records the ensures it was asked (under the test's root)."""
    return f"{root}:test:ensures"


def build() -> SilentStorage:
    settings = CommonSettings.from_env()
    node = os.environ["SLLM_NODE_ID"]
    return SilentStorage(settings, instance_id=f"storage-{node}", node_id=node)


if __name__ == "__main__":
    sys.exit(run_service(build))
