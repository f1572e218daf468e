"""Failover decisions, pure: which stream errors mean "the instance is gone", which instances
have been silent long enough to check, and what a liveness check's answers add up to.

A generation whose instance dies mid-stream is resumed elsewhere from the prompt plus the
tokens already sent (`services.router.resume`); these functions decide when.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from libs.protocol.errors import BusTimeoutError, UnavailableError
from libs.protocol.state import WorkerRecord

# Stream errors that mean the producer is gone (an instance that stopped or failed, a worker
# that died or went silent), not that the request is bad: the generation may go on elsewhere.
GONE_ERRORS = (UnavailableError, BusTimeoutError)

# What asking the worker for its info over the bus gave.
Probe = Literal["answered", "no_responders", "timeout", "error"]

# A stream silent for this many of its typical gaps between chunks has its worker checked...
SILENCE_GAPS = 8.0
# ...but not before this much silence: a healthy stream stalls for a few hundred ms now and
# then (a batch neighbour's prefill chunk, a pause of the worker's loop); such a check costs
# one bus round trip and is answered. At 50 tokens/s (a slow GPU) this is the limit.
MIN_SILENCE_S = 0.3
# Weight of the newest gap in a stream's typical gap (an exponentially weighted mean).
PACE_WEIGHT = 0.2


@dataclass
class Pace:
    """A stream's typical gap between chunks, from its second chunk on: the wait for the
    first one (queueing, prefill) says nothing about how often the next ones come."""

    gap: float | None = None
    last: float | None = None

    def frame(self, now: float) -> None:
        """A chunk arrived at ``now``."""
        if self.last is not None:
            gap = now - self.last
            self.gap = gap if self.gap is None else self.gap + PACE_WEIGHT * (gap - self.gap)
        self.last = now

    def restart(self) -> None:
        """The stream comes from another producer now: its first chunk (after a recompute)
        is not a gap; the typical gap so far stays the best guess."""
        self.last = None


def silence_limit(gap: float | None, interval: float) -> float:
    """How long a stream whose typical gap between chunks is ``gap`` may stay silent before
    its worker is checked: `SILENCE_GAPS` gaps, within [`MIN_SILENCE_S`, ``interval``];
    ``interval`` while it has no pace yet. A dead worker is found that much sooner."""
    if gap is None:
        return interval
    return min(max(SILENCE_GAPS * gap, MIN_SILENCE_S), interval)


def resumable(exc: BaseException) -> bool:
    """Whether a stream that ended in ``exc`` may be resumed on another instance."""
    return isinstance(exc, GONE_ERRORS)


def may_fail_over(*, done: int, limit: int, finished: bool, started: bool) -> bool:
    """Another failover is allowed: the generation started, has not finished, and has used
    fewer than ``limit`` failovers (``limit`` 0: failover is off)."""
    return started and not finished and done < limit


def silent(
    last_frame: Mapping[str, float],
    now: float,
    interval: float,
    last_probe: Mapping[str, float],
    limits: Mapping[str, float] | None = None,
) -> list[str]:
    """The instances worth a liveness check: every stream from them has been silent for
    their limit (``limits``, else ``interval``), and they were not checked within it.

    ``last_frame`` maps an instance to the latest frame (or stream start) of any of its
    streams; ``last_probe`` to when it was last checked. ``interval`` <= 0: never.
    """
    if interval <= 0:
        return []
    out = []
    for iid, at in last_frame.items():
        limit = limits.get(iid, interval) if limits else interval
        if now - at >= limit and now - last_probe.get(iid, float("-inf")) >= limit:
            out.append(iid)
    return sorted(out)


def gone_reason(probe: Probe, worker: WorkerRecord | None, instance_id: str) -> str | None:
    """Why the instance is gone, from a bus probe of its worker and the worker's Redis record
    (read after the probe); None when it may still be alive.

    "No responders" is definitive: the worker's connection, hence its process, is gone. A
    worker that answers may still have lost the instance: restarted (it comes back free) or
    given to another instance. A timeout alone proves nothing (a busy worker); its record
    then decides.
    """
    if probe == "no_responders":
        return "its worker does not answer on the bus (no responders)"
    if worker is None:
        return "its worker is no longer registered"
    if not worker.alive:
        return "its worker's heartbeat lapsed"
    if worker.instance_id != instance_id:
        return "its worker no longer holds it (restarted or reassigned)"
    return None


def latest(times: Iterable[tuple[str, float]]) -> dict[str, float]:
    """The latest time per key."""
    out: dict[str, float] = {}
    for key, at in times:
        if at > out.get(key, float("-inf")):
            out[key] = at
    return out
