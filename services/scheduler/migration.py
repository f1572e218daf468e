"""Live migration, orchestrated: have the model ready on a destination worker, ask the source
worker to move its running generations there, and free the source if asked.

The migration itself runs worker to worker (see services/worker/migration.py); the scheduler
only chooses the destination (the best free worker by estimated startup, as for any
placement), starts an instance there through the ordinary placement path, waits for it, and
afterwards stops the source instance when nothing runs on it any more.

Every wait follows the worker it waits on (`libs.common.follow`): the load of the destination
instance follows the destination worker, the migration and the unload the source worker. A
worker that dies or restarts meanwhile fails the migration within seconds (`PeerGone`), not
at `migration_load_timeout` (600 s) or the migration's own budget: what it was doing died
with it (the router fails its streams over), so nothing is asked again of its next life.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from libs.cluster import ClusterState
from libs.common.follow import PeerGone, Peers
from libs.protocol import Bus
from libs.protocol.endpoints import WORKER_MIGRATE, WORKER_UNLOAD
from libs.protocol.errors import (
    BadRequestError,
    BusError,
    BusTimeoutError,
    ConflictError,
    NotFoundError,
    UnavailableError,
)
from libs.protocol.messages import (
    DeploymentSpec,
    MigrateInstanceReply,
    MigrateInstanceRequest,
    MigrateRequest,
    PlaceReply,
    UnloadRequest,
)
from libs.protocol.state import InstanceRecord

log = logging.getLogger(__name__)

PlaceNew = Callable[[DeploymentSpec, str, str], Awaitable[PlaceReply]]

POLL_S = 0.05
# Beyond the worker's own migration timeout: the source answers after its last generation.
REPLY_MARGIN_S = 10.0


class Orchestrator:
    """Answers ``sched.migrate``."""

    def __init__(
        self,
        *,
        bus: Bus,
        state: ClusterState,
        place_new: PlaceNew,
        timeout: float,
        unload_timeout: float,
    ) -> None:
        self.bus = bus
        self.state = state
        self.place_new = place_new
        self.timeout = timeout
        self.unload_timeout = unload_timeout
        self.workers = Peers(bus, state.redis, state.keys, "worker")  # followed while waited on

    async def migrate(self, req: MigrateInstanceRequest) -> MigrateInstanceReply:
        source = await self.state.get_instance(req.instance_id)
        if source is None:
            raise NotFoundError(f"no instance {req.instance_id}")
        if source.status != "ready":
            raise ConflictError(f"instance {req.instance_id} is {source.status}, not ready")
        spec = await self.state.get_deployment(source.model)
        if spec is None:
            raise NotFoundError(f"no deployment named {source.model!r}")
        t0 = time.perf_counter()
        dest = await self._destination(req, source, spec)
        try:
            dest = await self.workers.watch(self._ready(dest, self.timeout), peer_id=dest.worker_id)
        except PeerGone as exc:
            raise PeerGone(
                f"destination worker {dest.worker_id} died while loading "
                f"{dest.instance_id}: {exc.message}",
                detail=exc.detail,
            ) from None
        load_s = time.perf_counter() - t0
        budget = (req.timeout_s or self.timeout) + REPLY_MARGIN_S
        # One attempt: a source worker that died took the generations with it.
        reply = await self.workers.request(
            WORKER_MIGRATE,
            MigrateRequest(
                instance_id=source.instance_id,
                destination_worker_id=dest.worker_id,
                destination_instance_id=dest.instance_id,
                request_ids=req.request_ids,
                max_rounds=req.max_rounds,
                target_gap=req.target_gap,
                timeout_s=req.timeout_s,
            ),
            worker_id=source.worker_id,
            peer_id=source.worker_id,
            attempts=1,
            timeout=budget,
        )
        freed = False
        if req.free_source and reply.remaining == 0:
            freed = await self._free(source)
        return MigrateInstanceReply(
            instance_id=source.instance_id,
            destination_instance_id=dest.instance_id,
            destination_worker_id=dest.worker_id,
            generations=reply.generations,
            remaining=reply.remaining,
            source_freed=freed,
            load_s=round(load_s, 6),
        )

    async def _destination(
        self, req: MigrateInstanceRequest, source: InstanceRecord, spec: DeploymentSpec
    ) -> InstanceRecord:
        """An instance of the model on the requested worker, or on the best free one (started
        there if needed); else another instance of the model that is already up."""
        tag = f"migrate:{source.instance_id}"
        wid = req.destination_worker_id
        if wid:
            if wid == source.worker_id:
                raise BadRequestError("the destination is the source's own worker")
            worker = await self.state.get_worker(wid)
            if worker is None or not worker.alive:
                raise NotFoundError(f"no live worker {wid}")
            if worker.instance_id:
                rec = await self.state.get_instance(worker.instance_id)
                if rec is not None and rec.model == source.model and rec.status != "failed":
                    return rec
                raise ConflictError(f"worker {wid} hosts another instance ({worker.instance_id})")
            placed = await self.place_new(spec, tag, wid)
            return await self._record(placed.instance_id)
        try:
            placed = await self.place_new(spec, tag, "")
            return await self._record(placed.instance_id)
        except UnavailableError:
            others = [
                i
                for i in await self.state.instances(source.model)
                if i.worker_id != source.worker_id and i.status in ("ready", "loading")
            ]
            if not others:
                raise
            return others[0]

    async def _record(self, instance_id: str) -> InstanceRecord:
        rec = await self.state.get_instance(instance_id)
        if rec is None:
            raise UnavailableError(f"instance {instance_id} vanished as it was placed")
        return rec

    async def _ready(self, rec: InstanceRecord, timeout: float) -> InstanceRecord:
        deadline = time.monotonic() + timeout
        while True:
            cur = await self.state.get_instance(rec.instance_id)
            if cur is None or cur.status in ("failed", "stopping"):
                why = cur.error if cur is not None and cur.error else "it stopped"
                raise UnavailableError(f"destination instance {rec.instance_id} failed: {why}")
            if cur.status == "ready":
                return cur
            if time.monotonic() >= deadline:
                raise BusTimeoutError(
                    f"destination instance {rec.instance_id} not ready within {timeout:g}s"
                )
            await asyncio.sleep(POLL_S)

    async def _free(self, source: InstanceRecord) -> bool:
        """Stop the source instance, unless something new runs on it (race-free on the
        worker: a conditional unload)."""
        try:
            reply = await self.workers.request(
                WORKER_UNLOAD,
                UnloadRequest(
                    instance_id=source.instance_id,
                    only_if_idle=True,
                    ignore_keep_alive=True,
                    reason="migrated",
                ),
                worker_id=source.worker_id,
                peer_id=source.worker_id,
                attempts=1,
                timeout=self.unload_timeout,
            )
        except BusError as exc:
            log.warning("could not free %s after its migration: %s", source.instance_id, exc)
            return False
        return reply.unloaded and reply.freed
