"""The router's view of cluster state: deployments and ready instances, cached briefly,
refreshed by ``instance.*`` / ``deployment.changed`` events, plus its own in-flight counts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import TypeVar

from redis.exceptions import RedisError

from libs.cluster import ClusterState
from libs.protocol.errors import UnavailableError
from libs.protocol.messages import DeploymentSpec
from libs.protocol.state import InstanceRecord

T = TypeVar("T")

# While Redis cannot be reached (a restart, a failover), requests go on with what was last read
# (deployments, ready instances) for this long: a worker that no longer has an instance says so,
# and the request moves on as after any stale read.
STALE_OK_S = 120.0


# An instance that holds a request's LoRA adapter is preferred unless it has this many more of
# our requests in flight than the least loaded one: loading an adapter costs milliseconds, so
# the preference must not pile a base's whole traffic onto one instance.
ADAPTER_AFFINITY = 4


def least_loaded(
    ready: Sequence[InstanceRecord],
    inflight: Mapping[str, int],
    avoid: Collection[str] = (),
    adapter: str = "",
) -> InstanceRecord | None:
    """The ready instance with the fewest of our requests in flight (ties: by id, stable);
    with ``adapter``, one that holds it resident unless it is much busier (`ADAPTER_AFFINITY`)."""
    candidates = [r for r in ready if r.instance_id not in avoid]
    if not candidates:
        return None

    def load(r: InstanceRecord) -> tuple[int, str]:
        return inflight.get(r.instance_id, 0), r.instance_id

    best = min(candidates, key=load)
    holders = [r for r in candidates if adapter and adapter in r.adapters]
    if holders:
        warm = min(holders, key=load)
        if load(warm)[0] - load(best)[0] < ADAPTER_AFFINITY:
            return warm
    return best


async def read(what: str, call: Callable[[], Awaitable[T]]) -> T:
    """A Redis read whose failure is a typed `UnavailableError` (503), not a crash."""
    try:
        return await call()
    except (RedisError, OSError) as exc:
        raise UnavailableError(f"cluster state unreachable while reading {what}: {exc!r}") from None


class ClusterView:
    """Cached reads of deployments and ready instances; events invalidate and wake waiters."""

    def __init__(
        self, state: ClusterState, *, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.state = state
        self.ttl = ttl
        self.clock = clock
        self.inflight: dict[str, int] = {}
        self._ready: dict[str, tuple[float, list[InstanceRecord]]] = {}
        # The last successful read per model, which events do not clear: the fallback.
        self._last_ready: dict[str, tuple[float, list[InstanceRecord]]] = {}
        self._deployments: dict[str, tuple[float, DeploymentSpec]] = {}
        self._suspects: dict[str, float] = {}
        self._fetches: dict[str, asyncio.Task[list[InstanceRecord]]] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._versions: dict[str, int] = {}

    # --- deployments ----------------------------------------------------------------------

    async def deployment(self, model: str) -> DeploymentSpec | None:
        """The deployment of ``model``; only positive answers are cached (a new deployment is
        visible at once)."""
        hit = self._deployments.get(model)
        if hit is not None and self.clock() - hit[0] < self.ttl:
            return hit[1]
        try:
            spec = await read("deployments", lambda: self.state.get_deployment(model))
        except UnavailableError:
            if hit is not None and self.clock() - hit[0] < STALE_OK_S:
                return hit[1]
            raise
        if spec is None:
            self._deployments.pop(model, None)
        else:
            self._deployments[model] = (self.clock(), spec)
        return spec

    def forget_deployment(self, model: str) -> None:
        self._deployments.pop(model, None)

    # --- instances ------------------------------------------------------------------------

    async def ready(self, model: str, *, refresh: bool = False) -> list[InstanceRecord]:
        """``model``'s ready instances, without those recently found unreachable."""
        hit = self._ready.get(model)
        if refresh or hit is None or self.clock() - hit[0] >= self.ttl:
            task = None if refresh else self._fetches.get(model)
            if task is None:
                # Concurrent misses share one Redis read.
                task = asyncio.ensure_future(self._fetch(model))
                self._fetches[model] = task
                task.add_done_callback(lambda t: self._fetch_done(model, t))
            records = await asyncio.shield(task)
        else:
            records = hit[1]
        now = self.clock()
        return [r for r in records if self._suspects.get(r.instance_id, 0.0) <= now]

    def _fetch_done(self, model: str, task: asyncio.Task[list[InstanceRecord]]) -> None:
        if self._fetches.get(model) is task:
            del self._fetches[model]
        if not task.cancelled():
            task.exception()  # retrieved here so that a failed read nobody awaits is not logged

    async def _fetch(self, model: str) -> list[InstanceRecord]:
        version = self._versions.get(model, 0)
        try:
            records = await read("instances", lambda: self.state.instances(model))
        except UnavailableError:
            last = self._last_ready.get(model)
            if last is not None and self.clock() - last[0] < STALE_OK_S:
                return last[1]
            raise
        ready = [r for r in records if r.status == "ready"]
        self._last_ready[model] = (self.clock(), ready)
        if self._versions.get(model, 0) == version:
            # Only cache what no event has contradicted since the read began.
            self._ready[model] = (self.clock(), ready)
        return ready

    async def instance(self, instance_id: str) -> InstanceRecord | None:
        """One instance record, read fresh from Redis."""
        return await read("an instance", lambda: self.state.get_instance(instance_id))

    def suspect(self, instance_id: str, seconds: float) -> None:
        """Skip an instance for a while: its worker did not answer or no longer has it."""
        self._suspects[instance_id] = self.clock() + seconds
        now = self.clock()
        for iid, until in list(self._suspects.items()):
            if until <= now:
                del self._suspects[iid]

    def begin(self, instance_id: str) -> None:
        self.inflight[instance_id] = self.inflight.get(instance_id, 0) + 1

    def end(self, instance_id: str) -> None:
        left = self.inflight.get(instance_id, 0) - 1
        if left > 0:
            self.inflight[instance_id] = left
        else:
            self.inflight.pop(instance_id, None)

    # --- change notification ---------------------------------------------------------------

    def changed(self, model: str) -> None:
        """An instance of ``model`` changed state: drop the cache and wake whoever waits."""
        self._ready.pop(model, None)
        self._versions[model] = self._versions.get(model, 0) + 1
        event = self._changed.pop(model, None)
        if event is not None:
            event.set()

    async def wait_changed(self, model: str, timeout: float) -> bool:
        """Wait until `changed` is called for ``model`` (True) or ``timeout`` passes (False)."""
        event = self._changed.setdefault(model, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), max(timeout, 0.0))
        except TimeoutError:
            return False
        return True
