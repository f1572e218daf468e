"""Keep-alive bookkeeping of a hosted instance: requests in flight, when it went idle, until
when finished requests asked to keep it, and whether an idle unload may happen now."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from libs.protocol.events import InstanceIdleEvent
from libs.protocol.messages import UnloadReply, UnloadRequest

if TYPE_CHECKING:
    from .hosting import Hosted


def begin(hosted: Hosted) -> None:
    """A request was accepted: the instance is busy until `end`."""
    hosted.in_flight += 1
    hosted.requests += 1
    if hosted.idle_news is not None:  # it did not stay idle: nothing to announce
        hosted.idle_news.cancel()
        hosted.idle_news = None


def end(hosted: Hosted, keep_alive_s: float | None, now: float) -> bool:
    """A request finished; it keeps the instance loaded ``keep_alive_s`` more seconds
    (negative: indefinitely; None: no wish of its own). True when it left the instance idle."""
    hosted.in_flight = max(hosted.in_flight - 1, 0)
    if keep_alive_s is not None:
        until = math.inf if keep_alive_s < 0 else now + keep_alive_s
        hosted.keep_until = max(hosted.keep_until, until)
    if hosted.in_flight or hosted.status != "ready":
        return False
    hosted.idle_since = now
    return True


def idle_event(hosted: Hosted, worker_id: str) -> InstanceIdleEvent | None:
    """The `instance.idle` news of an instance still idle; None if it is not (any more)."""
    if hosted.in_flight or hosted.status != "ready":
        return None
    return InstanceIdleEvent(
        instance_id=hosted.instance_id,
        model=hosted.model,
        worker_id=worker_id,
        keep_until=hosted.keep_until if math.isfinite(hosted.keep_until) else None,
        requests=hosted.requests,
    )


def refusal(hosted: Hosted, req: UnloadRequest, now: float) -> UnloadReply | None:
    """Why a conditional unload must not happen now, as the reply; None: it may."""
    if hosted.status == "ready" and not hosted.in_flight:
        left = 0.0 if req.ignore_keep_alive else hosted.keep_until - now
        if left <= 0:
            return None
        retry: float | None = left if math.isfinite(left) else None
    else:
        retry = None
    return UnloadReply(
        instance_id=hosted.instance_id,
        freed=False,
        unloaded=False,
        in_flight=hosted.in_flight,
        retry_after_s=retry,
        requests=hosted.requests,
    )
