"""The router's liveness watch: a worker that dies mid-generation is found within a few of its
streams' own gaps between chunks (at most ``SLLM_LIVENESS_PROBE_INTERVAL``), not when its
heartbeat lapses.

When every stream of an instance has been silent for its limit (`failover.silence_limit`:
eight typical gaps, at least 0.3 s), the router asks the instance's worker over the bus (no
responders: its connection, hence its process, is gone) and reads its record in Redis (a
worker that came back free has lost the instance); see `failover.gone_reason`. A gone
instance's streams then fail over (`Backend.instance_gone`).

Measured on a 2-node `sllm up` (CPU workers paced at 50 tokens/s, another ready instance,
`kill -9` of the serving worker; `tests/chaos/test_failover_pause.py`): the client's largest
gap was 1.45-1.80 s with a fixed 1 s silence, swept every 0.5 s, and a probe that retried "no
responders" for 0.5 s; 0.44-0.46 s now (0.3 s silence, a 50 ms sweep, ~0.1 s of probe, the
resume itself ~10 ms).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from libs.protocol.endpoints import SERVICE_INFO
from libs.protocol.errors import BusError, BusTimeoutError, NoRespondersError
from libs.protocol.events import InstanceStoppedEvent
from libs.protocol.messages import InfoRequest
from libs.protocol.state import InstanceRecord

from .cluster import read
from .failover import Probe, gone_reason, latest, silence_limit, silent

if TYPE_CHECKING:
    from .backend import Backend

log = logging.getLogger(__name__)

# How long a liveness check waits for the worker's answer (no answer proves nothing).
PROBE_TIMEOUT_S = 2.0
# How often the record of a dead instance is checked for a worker that came back without it.
ORPHAN_POLL_S = 0.25
# How often the streams' silences are looked at (a loop over the streams in flight).
SWEEP_S = 0.05
# "No responders" is asked again this many times, this far apart, before it counts: nats-server
# may answer it for a moment while a connection's subscriptions are being restored.
NO_RESPONDERS_CONFIRM = 2
NO_RESPONDERS_CONFIRM_S = 0.05


class LivenessWatch:
    """Liveness checks of the instances ``backend`` streams from (one at a time each)."""

    def __init__(self, backend: Backend) -> None:
        self.b = backend
        self._probed: dict[str, float] = {}  # instance -> last liveness check
        self._probing: set[str] = set()

    async def run(self) -> None:
        """Check the worker of every instance whose streams have all gone silent for their
        limit: a dead one is found within about that time, rather than when its heartbeat
        lapses and the scheduler's sweep reports it (seconds later)."""
        interval = self.b.settings.liveness_probe_interval
        if interval <= 0:
            return
        while True:
            await asyncio.sleep(min(interval / 2, SWEEP_S))
            try:
                self.check_silent(time.monotonic())
            except Exception:  # a bug here must not end the watch
                log.exception("liveness sweep failed")

    def check_silent(self, now: float) -> None:
        """Start a liveness check of each instance `silent` names (one at a time each)."""
        interval = self.b.settings.liveness_probe_interval
        last = latest(
            (iid, gen.last_frame_at) for iid, gens in self.b.streaming.items() for gen in gens
        )
        limits = {
            iid: min(silence_limit(gen.pace.gap, interval) for gen in gens)
            for iid, gens in self.b.streaming.items()
            if gens
        }
        for iid in list(self._probed):
            if iid not in last:
                del self._probed[iid]
        for iid in silent(last, now, interval, self._probed, limits):
            gens = self.b.streaming.get(iid)
            inst = next(iter(gens)).instance if gens else None
            if inst is None or iid in self._probing:
                continue
            self._probed[iid] = now
            self._probing.add(iid)
            self.b.bus.spawn(self._check(inst))

    async def _check(self, inst: InstanceRecord) -> None:
        try:
            why = await self.liveness(inst)
        except Exception as exc:  # a check that cannot be made proves nothing
            log.warning("liveness check of %s failed: %r", inst.instance_id, exc)
            return
        finally:
            self._probing.discard(inst.instance_id)
        if why is None:
            return
        log.warning("instance %s of %s is gone: %s", inst.instance_id, inst.model, why)
        self.b.view.changed(inst.model)
        self.b.bus.spawn(self._forget_when_orphaned(inst, why))
        await self.b.instance_gone(inst.instance_id, why)

    async def _forget_when_orphaned(self, inst: InstanceRecord, why: str) -> None:
        """The scheduler forgets the instances of a worker whose heartbeat lapses, but not
        those of a worker that restarted in time (alive again, and free): placement would
        keep offering such an instance. Forget it here once its worker is seen not to hold
        it (a restarting worker registers within seconds), until the record is gone anyway."""
        state = self.b.view.state
        deadline = time.monotonic() + 3 * self.b.settings.heartbeat_ttl
        while time.monotonic() < deadline:
            try:
                if await state.forget_orphaned_instance(inst):
                    await self.b.bus.emit(
                        InstanceStoppedEvent(
                            source=self.b.source,
                            instance_id=inst.instance_id,
                            model=inst.model,
                            worker_id=inst.worker_id,
                            reason=f"worker died: {why}",
                        )
                    )
                    return
                if await state.get_instance(inst.instance_id) is None:
                    return  # the scheduler forgot it
            except (RedisError, OSError, BusError) as exc:
                log.warning("instance %s not forgotten yet: %r", inst.instance_id, exc)
            await asyncio.sleep(ORPHAN_POLL_S)

    async def liveness(self, inst: InstanceRecord) -> str | None:
        """Why ``inst`` is gone, or None when it may be alive (see `gone_reason`)."""
        return await instance_liveness(self.b, inst)


async def instance_liveness(b: Backend, inst: InstanceRecord) -> str | None:
    """Why ``inst`` is gone, or None when it may be alive: its worker is asked over the bus
    (no responders: gone) and its record read (a worker that came back free lost it)."""
    probe = await _probe(b, inst)
    if probe == "no_responders":
        return gone_reason(probe, None, inst.instance_id)
    worker = await read("a worker", lambda: b.view.state.get_worker(inst.worker_id))
    return gone_reason(probe, worker, inst.instance_id)


async def still_serving(b: Backend, inst: InstanceRecord) -> bool:
    """Whether ``inst``'s worker answers now and still holds it (a worker that does not
    answer, or a check that cannot be made, says no: the caller treats it as gone)."""
    try:
        if await _probe(b, inst) != "answered":
            return False
        worker = await read("a worker", lambda: b.view.state.get_worker(inst.worker_id))
    except BusError:
        return False
    return gone_reason("answered", worker, inst.instance_id) is None


async def _probe(b: Backend, inst: InstanceRecord) -> Probe:
    for attempt in range(NO_RESPONDERS_CONFIRM + 1):
        try:
            await b.bus.request_once(
                SERVICE_INFO,
                InfoRequest(),
                timeout=min(PROBE_TIMEOUT_S, b.settings.request_timeout),
                kind="worker",
                instance_id=inst.worker_id,
            )
        except NoRespondersError:
            if attempt == NO_RESPONDERS_CONFIRM:
                return "no_responders"
            await asyncio.sleep(NO_RESPONDERS_CONFIRM_S)
            continue
        except BusTimeoutError:
            return "timeout"
        except BusError:
            return "error"
        return "answered"
    raise AssertionError("unreachable")  # the loop returns
