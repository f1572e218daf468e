"""What this worker hosts against what the cluster state reserves it for, checked at every
heartbeat (`ReservationCheck.beat`), and the two ways they can disagree for good:

* It hosts an instance the state no longer gives it: the scheduler retired the instance while
  this worker was cut off (a network partition), so nobody routes to it any more and the
  worker would refuse every new load. It unloads the instance.
* It hosts nothing, yet it is reserved for an instance recorded on it as loading: the
  scheduler reserved it, wrote the record and died before its load order went out (or the
  order was lost). The router waits for that instance, and the restarted scheduler joins the
  load "under way". The worker takes the load up itself, from the record and the deployment;
  an order that arrives after all is answered as a repeat ("already on it").

A disagreement is acted on only when two beats in a row saw the same one: a placement under
way reserves the worker a moment before its order arrives.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Protocol

from redis.exceptions import RedisError

from libs.cluster import ClusterState
from libs.protocol.errors import BusError, ConflictError, NotFoundError, UnavailableError
from libs.protocol.messages import LoadRequest, UnloadRequest

if TYPE_CHECKING:
    from .hosting import Hosted


log = logging.getLogger(__name__)


class HostsOne(Protocol):
    """What the check needs of a worker's host (`hosting.Host`, or a stand-in's)."""

    @property
    def hosted(self) -> Hosted | None: ...

    async def load(self, req: LoadRequest, /) -> object: ...

    async def unload(self, req: UnloadRequest, /) -> object: ...


class ReservationCheck:
    """Acts on a lasting disagreement between the hosted instance and the reservation."""

    def __init__(self, *, state: ClusterState, host: HostsOne, worker_id: str) -> None:
        self.state = state
        self.host = host
        self.worker_id = worker_id
        self._seen: tuple[str, str] | None = None  # (hosted, reserved) at the last beat

    async def beat(self, epoch: int) -> None:
        """One check (``epoch``: this worker's registration; another one's record is not ours)."""
        h = self.host.hosted
        if h is not None and h.status == "stopping":  # its teardown retires it
            self._seen = None
            return
        me = await self.state.get_worker(self.worker_id)
        hosted = h.instance_id if h is not None else ""
        if me is None or me.epoch != epoch or me.instance_id == hosted:
            self._seen = None
            return
        seen = (hosted, me.instance_id)
        if self._seen != seen:
            self._seen = seen  # once more at the next beat, to be sure
            return
        self._seen = None
        if hosted:
            await self._unload(hosted, me.instance_id)
        else:
            await self._take_up(me.instance_id)

    async def _unload(self, hosted: str, reserved: str) -> None:
        log.warning(
            "instance %s lost its reservation (the worker is now %s): unloading it",
            hosted,
            f"reserved for {reserved}" if reserved else "free",
        )
        with contextlib.suppress(NotFoundError):  # gone meanwhile
            await self.host.unload(UnloadRequest(instance_id=hosted, reason="reservation lost"))

    async def _take_up(self, instance_id: str) -> None:
        rec = await self.state.get_instance(instance_id)
        if rec is None or rec.worker_id != self.worker_id or rec.status != "loading":
            return  # a reservation without its record: the scheduler's reconciliation frees it
        spec = await self.state.get_deployment(rec.model)
        if spec is None:
            return  # undeployed: the undeployment retires the instance
        log.warning(
            "reserved for instance %s of %s, whose load order never came: loading it",
            instance_id,
            rec.model,
        )
        try:
            await self.host.load(
                LoadRequest(
                    instance_id=instance_id,
                    model=rec.model,
                    checkpoint_uri=spec.checkpoint_uri,
                    task=spec.task,
                )
            )
        except BusError as exc:  # the records changed meanwhile: the next beats look again
            log.info("could not take up the load of %s: %s", instance_id, exc)


async def check_reservation(state: ClusterState, worker_id: str, req: LoadRequest) -> None:
    """Raise unless ``worker_id`` is reserved for ``req``'s instance, recorded on it for
    ``req``'s model: a load order for any other instance is refused (a stale or foreign one)."""
    try:
        worker = await state.get_worker(worker_id)
        rec = await state.get_instance(req.instance_id)
    except (RedisError, OSError) as exc:
        raise UnavailableError(f"cannot read cluster state: {exc!r}") from None
    held = worker.instance_id if worker is not None else "(unregistered)"
    if held != req.instance_id:
        raise ConflictError(
            f"worker {worker_id} is reserved for {held or 'nothing'!r}, not for {req.instance_id!r}"
        )
    if rec is None:
        raise NotFoundError(f"instance {req.instance_id} has no record in the cluster state")
    if rec.worker_id != worker_id or rec.model != req.model:
        raise ConflictError(
            f"instance {req.instance_id} is recorded as {rec.model!r} on {rec.worker_id}"
        )
