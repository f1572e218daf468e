"""Deployments: made, changed and prepared.

A deployment is checked when it is made: a storage service looks at its checkpoint
(`STORAGE_INSPECT`: the source exists, is a model transformers can build, its tokenizer encodes)
and a bad one is refused there and then, nothing stored. Then it is *prepared*: copied into the
DRAM tier of the nodes likely to start it (`prefetch`). Its ``status`` says where it stands:
"preparing" while that runs, "ready" after it (or at once when there is nothing to copy to),
"failed" with the reason when the copy showed the checkpoint can never be served. A request for
a failed deployment is refused at once with that reason (the router reads the status).

A preparation that dies with its scheduler is taken up again by housekeeping
(`resume_stuck`), so no deployment stays "preparing" for ever.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from libs.cluster import ClusterState
from libs.common.hub_ids import normalise_checkpoint_uri
from libs.protocol import Bus
from libs.protocol.endpoints import STORAGE_INSPECT
from libs.protocol.errors import (
    BadRequestError,
    ConflictError,
    CorruptError,
    InvalidCheckpointError,
    NoRespondersError,
    NotFoundError,
)
from libs.protocol.events import DeploymentEvent
from libs.protocol.messages import (
    KNOBS,
    DeploymentSpec,
    DeployReply,
    DeployRequest,
    InspectRequest,
    PatchDeploymentRequest,
    Task,
)

from .adapter_rules import check_adapter, check_patch
from .deployment_book import DeploymentBook
from .prefetch import Prefetched, prefetch

log = logging.getLogger(__name__)

# Errors of a copy that no retry will mend: the deployment fails with them.
PERMANENT = (InvalidCheckpointError, BadRequestError, NotFoundError, CorruptError)


@dataclass(frozen=True)
class DeployConfig:
    prefetch_replicas: int
    prefetch_timeout: float
    inspect_timeout: float


def outcome(done: Prefetched) -> tuple[str, str]:
    """A deployment's status and error after its preparation (pure): ready when any node holds
    a copy or nothing was tried or nothing failed for good; failed with the first permanent
    error when every copy failed and one failed for good (a registry down is not that)."""
    if done.copied or not done.errors:
        return "ready", ""
    permanent = [e for e in done.errors if isinstance(e, PERMANENT)]
    if permanent:
        return "failed", permanent[0].message
    return "ready", ""


def conflict(name: str) -> ConflictError:
    return ConflictError(
        f"a deployment named {name!r} exists: change its knobs with "
        f"PATCH /v1/deployments/{name}, or delete it first",
        detail={"param": "name", "code": "deployment_exists"},
    )


class Deployer:
    """The scheduler's deploy and patch handlers, and the preparations they start."""

    def __init__(
        self,
        bus: Bus,
        state: ClusterState,
        book: DeploymentBook,
        config: DeployConfig,
        wake_scaler: Callable[[], None],
    ) -> None:
        self.bus = bus
        self.state = state
        self.book = book
        self.config = config
        self.wake_scaler = wake_scaler
        self._preparing: dict[str, asyncio.Task[None]] = {}
        self._stuck_since: dict[str, float] = {}

    async def deploy(self, req: DeployRequest) -> DeployReply:
        name = req.spec.name
        uri = normalise_checkpoint_uri(req.spec.checkpoint_uri)  # `org/name`: a Hub id
        if uri != req.spec.checkpoint_uri:
            req = req.model_copy(
                update={"spec": req.spec.model_copy(update={"checkpoint_uri": uri})}
            )
        existing = await self.state.get_deployment(name)
        if req.mode == "create" and existing is not None:
            raise conflict(name)
        base_uri = ""
        if req.spec.base:
            base = await self.state.get_deployment(req.spec.base)
            check_adapter(req.spec, base)
            assert base is not None
            base_uri = base.checkpoint_uri
        # The same checkpoint, not failed: its preparation stands (an upsert changes knobs).
        same = (
            existing is not None
            and (existing.checkpoint_uri, existing.base, existing.task)
            == (req.spec.checkpoint_uri, req.spec.base, req.spec.task)
            and existing.status != "failed"
        )
        if req.check and not same:
            await self.inspect(req.spec.checkpoint_uri, base_uri, req.spec.task)
        if same:
            assert existing is not None
            status, error = existing.status, existing.error
        else:
            status, error = ("preparing" if self.config.prefetch_replicas > 0 else "ready"), ""
        spec = req.spec.model_copy(
            update={
                "created_at": existing.created_at if existing else time.time(),
                "status": status,
                "error": error,
            }
        )
        if req.mode == "create":
            if not await self.state.create_deployment(spec):
                raise conflict(name)  # another create of the name won meanwhile
            created = True
        else:
            created = await self.state.put_deployment(spec)
        self.book.put(spec)
        await self.bus.emit(DeploymentEvent(name=name, action="created" if created else "updated"))
        if not same:
            self.start_preparing(spec)
        if spec.min_instances:
            self.wake_scaler()
        return DeployReply(spec=spec, created=created)

    async def patch(self, req: PatchDeploymentRequest) -> DeployReply:
        changes = {k: getattr(req, k) for k in KNOBS if getattr(req, k) is not None}
        current = await self.state.get_deployment(req.name)
        if current is None:
            raise NotFoundError(f"no deployment named {req.name!r}", detail={"param": "name"})
        check_patch(current, changes)
        merged = {**current.model_dump(), **changes}
        if merged["min_instances"] > merged["max_instances"]:
            raise BadRequestError(
                f"min_instances ({merged['min_instances']}) exceeds max_instances "
                f"({merged['max_instances']})",
                detail={"param": "min_instances"},
            )
        spec = await self.state.update_deployment(req.name, **changes)
        if spec is None:
            raise NotFoundError(f"no deployment named {req.name!r}", detail={"param": "name"})
        self.book.put(spec)
        await self.bus.emit(DeploymentEvent(name=req.name, action="updated"))
        self.wake_scaler()
        return DeployReply(spec=spec, created=False)

    async def inspect(self, uri: str, base_uri: str = "", task: Task = "generate") -> None:
        """Have a storage service check ``uri`` (`InvalidCheckpointError` if it is bad; with
        ``base_uri``, ``uri`` is a LoRA adapter of that base). With no storage service up, the
        deployment is stored unchecked: its preparation and its first load will find out."""
        try:
            await self.bus.request(
                STORAGE_INSPECT,
                InspectRequest(checkpoint_uri=uri, base_uri=base_uri, task=task),
                timeout=self.config.inspect_timeout,
            )
        except NoRespondersError:
            log.warning("no storage service is up to check %s: deployed unchecked", uri)

    # --- preparation ----------------------------------------------------------------------

    def start_preparing(self, spec: DeploymentSpec) -> None:
        old = self._preparing.pop(spec.name, None)
        if old is not None:
            old.cancel()
        task = self.bus.spawn(self._prepare(spec))
        self._preparing[spec.name] = task
        task.add_done_callback(lambda t: self._prepared(spec.name, t))

    def _prepared(self, name: str, task: asyncio.Task[None]) -> None:
        if self._preparing.get(name) is task:
            del self._preparing[name]

    async def _prepare(self, spec: DeploymentSpec) -> None:
        c = self.config
        done = await prefetch(
            self.bus, self.state, spec, replicas=c.prefetch_replicas, timeout=c.prefetch_timeout
        )
        status, error = outcome(done)
        current = await self.state.get_deployment(spec.name)
        if current is None or current.checkpoint_uri != spec.checkpoint_uri:
            return  # deleted or redeployed meanwhile: not ours to mark
        if (current.status, current.error) == (status, error):
            return
        updated = await self.state.update_deployment(spec.name, status=status, error=error)
        if updated is None:
            return
        self.book.put(updated)
        if status == "failed":
            log.warning("deployment %s failed its preparation: %s", spec.name, error)
        await self.bus.emit(DeploymentEvent(name=spec.name, action="updated"))

    def preparing(self, name: str) -> bool:
        return name in self._preparing

    async def resume_stuck(self, specs: list[DeploymentSpec], now: float) -> None:
        """Housekeeping: a deployment seen "preparing" for longer than a preparation may take,
        with no preparation of this scheduler under way (its scheduler died), is prepared
        again."""
        limit = self.config.prefetch_timeout * 2 + 30.0
        seen = set()
        for spec in specs:
            if spec.status != "preparing" or self.preparing(spec.name):
                continue
            seen.add(spec.name)
            since = self._stuck_since.setdefault(spec.name, now)
            if now - since >= limit:
                log.warning(
                    "deployment %s: preparing for %.0fs, preparing it again", spec.name, now - since
                )
                self._stuck_since.pop(spec.name, None)
                self.start_preparing(spec)
        for name in set(self._stuck_since) - seen:
            del self._stuck_since[name]
