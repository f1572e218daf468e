"""Cold-start progress for a streamed answer that asks for it
(``"stream_options": {"include_progress": true}``).

While a request waits for its model's cold start, the answer carries SSE *comments* (lines
starting with ``:``), which every SSE client, the openai SDK included, skips unless it looks for
them: ``: progress {"phase": "loading", "tier": "ssd", "elapsed_s": 1.2, "eta_s": 0.8}``.
Phases: ``queued`` (no instance placed yet: no free worker, or the scheduler is deciding),
``fetching`` (the instance's checkpoint comes from the registry), ``loading`` (from a node's
DRAM or SSD tier, or the fetch is done). ``eta_s`` is the scheduler's calibrated estimate of the
instance's startup less the time it has loaded (null while queued).

A start that ends within `FIRST_PROGRESS_S` (a warm model, a bad request) answers as without
progress: a real HTTP status for an error. Past that, headers go out and an error becomes an
error event, as for any streamed answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

# How long a start may take before the answer switches to streaming progress, and how often
# a progress comment goes out after that.
FIRST_PROGRESS_S = 0.25
PROGRESS_EVERY_S = 0.5


@dataclass(frozen=True)
class Placed:
    """A cold start's instance as the scheduler placed it."""

    instance_id: str
    tier: str  # where its checkpoint is read from: "registry", "ssd" or "dram"
    estimated_s: float
    at: float  # monotonic


@dataclass(frozen=True)
class Progress:
    phase: str
    elapsed_s: float
    tier: str | None = None
    eta_s: float | None = None
    instance_id: str = ""


def progress_of(placed: Placed | None, fetched: bool, waiting_since: float, now: float) -> Progress:
    """Where a cold start stands (pure). ``fetched``: the instance's load got its copy."""
    if placed is None:
        return Progress("queued", elapsed_s=now - waiting_since)
    fetching = placed.tier == "registry" and not fetched
    return Progress(
        "fetching" if fetching else "loading",
        elapsed_s=now - waiting_since,
        tier=placed.tier,
        eta_s=max(0.0, placed.estimated_s - (now - placed.at)),
        instance_id=placed.instance_id,
    )


def settled(last: Progress | None, new: Progress) -> Progress:
    """What a request reports next (pure): a cold start that ended releases its waiters, whose
    start then still opens a stream; that moment is the end of loading, not a new queue."""
    if last is not None and last.phase != "queued" and new.phase == "queued":
        return Progress(last.phase, new.elapsed_s, last.tier, 0.0, last.instance_id)
    return new


def comment(p: Progress) -> bytes:
    body = {
        "phase": p.phase,
        "elapsed_s": round(p.elapsed_s, 3),
        "tier": p.tier,
        "eta_s": None if p.eta_s is None else round(p.eta_s, 3),
        "instance_id": p.instance_id or None,
    }
    return b": progress " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"
