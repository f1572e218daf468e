"""Failover, the act: a generation whose instance died mid-stream goes on on another ready
instance (or one started for it), or on the same one when only frames were lost, from the prompt
plus the tokens already received, so that the client sees one unbroken stream.

Whether to fail over is `failover.py`'s (pure); what the resumed request carries is
`Generation.resume_request`.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from libs.protocol.errors import BusError, BusTimeoutError, InternalError, UnavailableError
from libs.protocol.events import RequestFailoverEvent

from .backend import DEAD_S
from .failover import may_fail_over
from .liveness import still_serving

if TYPE_CHECKING:
    from .generation import Generation

log = logging.getLogger(__name__)


async def fail_over(gen: Generation, exc: BusError) -> None:
    """Resume ``gen`` on another instance from the prompt plus the tokens already received,
    on a fresh inbox (a producer that is not quite dead can never interleave with the new one)
    numbered on from the old stream; raise ``exc`` when not allowed or when no instance can
    take it in time."""
    b = gen.backend
    old, reader = gen.instance, gen.reader
    allowed = may_fail_over(
        done=gen.failovers,
        limit=b.settings.failover_attempts,
        finished=gen.finish_reason is not None,
        started=old is not None and reader is not None,
    )
    if not allowed or old is None or reader is None:
        raise exc
    gen.failovers += 1
    failed_at = time.monotonic()
    # The stream went silent or lost a frame (a bus reconnect drops what was in flight)
    # while its worker still holds the instance: resume there, on a fresh inbox (its
    # prefix cache makes the recompute cheap); a gone instance is left out for good.
    lost_frames = isinstance(exc, BusTimeoutError) and await still_serving(b, old)
    log.warning(
        "request %s: %s after %d tokens (%s); resuming %s",
        gen.request.request_id,
        f"stream from {old.instance_id} broke" if lost_frames else f"{old.instance_id} gone",
        len(gen.generated_token_ids),
        exc.message,
        "on the same instance" if lost_frames else "elsewhere",
    )
    if not lost_frames:
        b.view.suspect(old.instance_id, DEAD_S)
        b.view.changed(gen.model)
    resume = gen.resume_request().model_copy(update={"inbox": ""})
    await reader.aclose()
    gen.unbind()
    gen.deadline = failed_at + b.settings.start_timeout
    try:
        await gen.connect(resume, set() if lost_frames else {old.instance_id})
    except BusError as err:
        raise UnavailableError(
            f"{exc.message}; resuming the generation elsewhere failed: {err.message}",
            detail={"instance": old.instance_id, "model": gen.model},
        ) from None
    new = gen.instance
    if new is None:  # connect binds an instance or raises
        raise InternalError("failover connected to no instance")
    await b.bus.emit(
        RequestFailoverEvent(
            source=b.source,
            request_id=gen.request.request_id,
            model=gen.model,
            from_instance_id=old.instance_id,
            from_worker_id=old.worker_id,
            to_instance_id=new.instance_id,
            to_worker_id=new.worker_id,
            tokens=len(gen.generated_token_ids),
            attempt=gen.failovers,
            reason=exc.message[:1000],
            wait_s=round(time.monotonic() - failed_at, 6),
        )
    )
