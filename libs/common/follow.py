"""Waits that follow the callee's life: a request to a service that dies or restarts fails
within seconds (`PeerGone`), not at its full timeout, and is retried on the restarted one.

A service's life is one run of its process: its instance id and start time (`Life`), as its
``info`` endpoint and its liveness key in Redis (`Keys.alive`, refreshed every heartbeat)
tell them. While a request is in flight, `follow` checks the callee every `FOLLOW_INTERVAL_S`
on both: "no responders" on its info subject (its connection, hence its process, is gone), a
lapsed heartbeat, or another start time (restarted: what the old process was doing is lost).
`judge` and `Absence` decide, pure; `Peers.request` adds the retry (find the service that now
serves the subject, e.g. the node's restarted storage service, and ask it again).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from libs.cluster import ClusterState
from libs.protocol import Bus, BusError, Endpoint, Keys, Message
from libs.protocol.endpoints import SERVICE_INFO
from libs.protocol.errors import (
    BusTimeoutError,
    NoRespondersError,
    UnavailableError,
)
from libs.protocol.messages import InfoRequest, ServiceInfoReply
from libs.protocol.schema import decode_json

log = logging.getLogger(__name__)

Req = TypeVar("Req", bound=Message)
Rep = TypeVar("Rep", bound=Message)
T = TypeVar("T")

# How often a request in flight checks on its callee.
FOLLOW_INTERVAL_S = 0.5
# How long evidence of absence (no responders, a lapsed heartbeat) must last before the callee
# counts as gone: one "no responders" can be a blip of the bus (a reconnect), two a second
# apart are a process that is gone.
ABSENT_GRACE_S = 1.0
# How long one check waits for the callee's info answer (no answer proves nothing: busy).
PROBE_TIMEOUT_S = 2.0
# How long a retry waits for a new life of the callee: `sllm up` restarts a killed service
# within a second or two, a crash-looping one after up to 30 s (its longest backoff) plus its
# start-up; a wait shorter than that would give up just before it comes back.
COMEBACK_S = 45.0
# How often the wait for a (new) life looks again.
FIND_POLL_S = 0.2
# Requests one call may make: the first and the retries after a death or restart.
ATTEMPTS = 3
# How long `cancel_all` waits before cancelling a task again that has not ended.
RECANCEL_S = 0.5

Sign = Literal["same", "other", "absent", "unknown"]
Verdict = Literal["alive", "restarted", "absent", "unknown"]


class PeerGone(UnavailableError):
    """The service a request waited on died or restarted: its answer will never come."""


@dataclass(frozen=True)
class Life:
    """One run of a service process."""

    kind: str
    instance_id: str
    started_at: float
    node_id: str = ""

    @classmethod
    def of(cls, info: ServiceInfoReply) -> Life:
        return cls(info.kind, info.instance_id, info.started_at, info.node_id)

    def sign(self, info: ServiceInfoReply | None) -> Sign:
        """What ``info`` (an answer or a heartbeat; None: none) says about this life."""
        if info is None:
            return "absent"
        same = (info.instance_id, info.started_at) == (self.instance_id, self.started_at)
        return "same" if same else "other"


def judge(info: Sign, beat: Sign) -> Verdict:
    """The callee's state from its info answer (fresh) and its heartbeat (up to a TTL old).

    Another start time in either is a restart. A fresh answer of the same life is alive,
    whatever the heartbeat says (the store may have restarted empty). "No responders" beats
    a heartbeat that has not lapsed yet (a killed process's key outlives it by up to a TTL);
    a lapsed heartbeat beats an info request that timed out (a process that stopped beating).
    """
    if "other" in (info, beat):
        return "restarted"
    if info == "same":
        return "alive"
    if "absent" in (info, beat):
        return "absent"
    if beat == "same":
        return "alive"
    return "unknown"


@dataclass
class Absence:
    """Turns a series of verdicts into "gone": a restart at once, absence once it has lasted
    ``grace`` seconds without an alive verdict in between."""

    grace: float = ABSENT_GRACE_S
    since: float | None = None

    def gone(self, verdict: Verdict, now: float) -> str | None:
        """Why the callee is gone after ``verdict`` at ``now``; None while it may be alive."""
        if verdict == "restarted":
            return "restarted (another process serves it now)"
        if verdict == "alive":
            self.since = None
        elif verdict == "absent":
            if self.since is None:
                self.since = now
            if now - self.since >= self.grace:
                return f"gone (no responders, or heartbeat lapsed, for {now - self.since:.1f}s)"
        return None


class Peers:
    """Finds and follows the services of one ``kind`` (their lives in Redis and on the bus)."""

    def __init__(
        self,
        bus: Bus,
        redis: aioredis.Redis,
        keys: Keys,
        kind: str,
        *,
        interval: float = FOLLOW_INTERVAL_S,
        grace: float = ABSENT_GRACE_S,
        comeback_s: float = COMEBACK_S,
    ) -> None:
        self.bus = bus
        self.redis = redis
        self.keys = keys
        self.kind = kind
        self.interval = interval
        self.grace = grace
        self.comeback_s = comeback_s

    # --- finding a life ---------------------------------------------------------------------

    async def heartbeat(self, instance_id: str) -> ServiceInfoReply | None:
        """The service's latest heartbeat (None once its key lapsed)."""
        raw = await self.redis.get(self.keys.alive(self.kind, instance_id))
        return _info(raw)

    async def find(self, *, node_id: str = "", instance_id: str = "") -> Life | None:
        """The live service with ``instance_id``, or the one on ``node_id`` that started last
        (its heartbeat in Redis); None when there is none, or the store cannot say."""
        try:
            if instance_id:
                info = await self.heartbeat(instance_id)
                return Life.of(info) if info is not None else None
            beats = await ClusterState(self.redis, self.keys).live_services(self.kind)
            infos = [_info(raw) for raw in beats.values()]
        except (RedisError, OSError) as exc:
            log.warning("cannot read the %s services' heartbeats: %r", self.kind, exc)
            return None
        lives = [Life.of(i) for i in infos if i is not None and i.node_id == node_id]
        return max(lives, key=lambda life: life.started_at, default=None)

    async def wait_new(
        self, seconds: float, *, node_id: str = "", instance_id: str = "", not_: Life | None = None
    ) -> Life:
        """A life of the service other than ``not_``, waiting up to ``seconds`` for one; else
        `UnavailableError`."""
        where = f"on node {node_id}" if node_id else instance_id
        deadline = time.monotonic() + seconds
        while True:
            life = await self.find(node_id=node_id, instance_id=instance_id)
            if life is not None and life != not_:
                return life
            if time.monotonic() >= deadline:
                raise UnavailableError(
                    f"no {self.kind} service {'came back ' if not_ else ''}{where} "
                    f"within {seconds:g}s"
                )
            await asyncio.sleep(FIND_POLL_S)

    # --- following one ----------------------------------------------------------------------

    async def check(self, life: Life) -> Verdict:
        """One look at ``life``: its info answer and its heartbeat, judged."""
        try:
            answer = await self.bus.request_once(
                SERVICE_INFO,
                InfoRequest(),
                timeout=min(PROBE_TIMEOUT_S, self.interval * 4),
                kind=self.kind,
                instance_id=life.instance_id,
            )
            info = life.sign(answer)
        except NoRespondersError:
            info = "absent"
        except BusError:
            info = "unknown"
        try:
            beat = life.sign(await self.heartbeat(life.instance_id))
        except (RedisError, OSError):
            beat = "unknown"
        return judge(info, beat)

    async def until_gone(self, life: Life) -> str:
        """Returns why ``life`` ended, once it did (checks every ``interval``)."""
        absence = Absence(self.grace)
        me = asyncio.current_task()
        while True:
            await asyncio.sleep(self.interval)
            try:
                verdict = await self.check(life)
            except Exception:  # a check that cannot be made proves nothing
                log.exception("checking %s %s failed", self.kind, life.instance_id)
                continue
            if me is not None and me.cancelling():
                # Python 3.11's wait_for (inside nats-py's request) returns a reply that lands
                # together with a cancellation and drops the cancellation: honour it here, or
                # this loop outlives the `follow` that cancelled it, which then waits for ever.
                raise asyncio.CancelledError()
            why = absence.gone(verdict, time.monotonic())
            if why is not None:
                return why

    async def follow(self, call: Awaitable[T], life: Life) -> T:
        """Await ``call`` while following ``life``: `PeerGone` as soon as it died or restarted
        (``call`` is then cancelled). ``call``'s own result or error wins a tie."""
        task = asyncio.ensure_future(call)
        watch = asyncio.ensure_future(self.until_gone(life))
        try:
            await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                task.cancel()
                # A reply that lands with the cancellation is kept (3.11's wait_for returns it).
                await asyncio.wait({task})
            if task.cancelled():
                why = watch.result() if watch.done() and not watch.cancelled() else "gone"
                raise PeerGone(
                    f"{self.kind} {life.instance_id} {why}",
                    detail={"kind": self.kind, "instance_id": life.instance_id},
                )
            return task.result()
        finally:
            await cancel_all(task, watch)

    async def watch(self, call: Awaitable[T], *, node_id: str = "", peer_id: str = "") -> T:
        """Await ``call`` (a wait on the service, not a request to it: a poll of the state it
        should change, a stream it feeds) while following the service on ``node_id``, or with
        instance id ``peer_id``, as it lives now: `PeerGone` as soon as it died or restarted.
        One without a heartbeat in Redis is not followed: ``call`` is simply awaited."""
        task = asyncio.ensure_future(call)
        try:
            life = await self.find(node_id=node_id, instance_id=peer_id)
        except BaseException:
            task.cancel()
            raise
        return await (task if life is None else self.follow(task, life))

    async def request(
        self,
        endpoint: Endpoint[Req, Rep],
        msg: Req,
        *,
        timeout: float,
        node_id: str = "",
        peer_id: str = "",
        attempts: int = ATTEMPTS,
        **params: str,
    ) -> Rep:
        """``bus.request`` to the service on ``node_id`` (or with instance id ``peer_id``),
        following its life; when it dies or restarts (or nobody serves the subject), asked
        again of its next life, up to ``attempts`` requests in all, within ``timeout`` overall.
        A service that does not come back within ``comeback_s`` fails the call
        (`UnavailableError`). One without a heartbeat in Redis (the store lost it, or a
        stand-in serves the subject) is asked once, without being followed."""
        if "node_id" in endpoint.params:
            params["node_id"] = node_id
        seen: Life | None = None  # a life that died: wait for the next before asking again
        try:
            async with asyncio.timeout(timeout):
                for attempt in range(attempts):
                    if seen is not None:
                        life: Life | None = await self.wait_new(
                            self.comeback_s, node_id=node_id, instance_id=peer_id, not_=seen
                        )
                    else:
                        life = await self.find(node_id=node_id, instance_id=peer_id)
                    call = self.bus.request(endpoint, msg, timeout=timeout, **params)
                    try:
                        return await (call if life is None else self.follow(call, life))
                    except (PeerGone, NoRespondersError) as exc:
                        # One never seen alive is not waited for: nobody serves the subject.
                        if life is None or attempt + 1 >= attempts:
                            raise
                        log.warning("%s: %s; asking again", endpoint.name, exc.message)
                        # A blip of the bus leaves the same life serving: ask it again.
                        if isinstance(exc, PeerGone) or await self.check(life) != "alive":
                            seen = life
        except TimeoutError:
            raise BusTimeoutError(f"{endpoint.name}: no answer within {timeout:g}s") from None
        raise AssertionError("unreachable")  # the loop returns or raises


async def cancel_all(*tasks: asyncio.Future[Any]) -> None:
    """Cancel ``tasks`` and wait until they ended, cancelling again any that is still running
    after `RECANCEL_S`: a cancellation can be lost (Python 3.11's wait_for returns a result
    that lands with it), and a wait for a task that lost its cancellation never ends."""
    pending = set(tasks)
    while pending:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_S)


def _info(raw: bytes | str | None) -> ServiceInfoReply | None:
    if raw is None:
        return None
    try:
        return decode_json(raw, ServiceInfoReply)
    except BusError:
        return None
