"""Events of a request at the router: completed (with its latency breakdown), failed over."""

from __future__ import annotations

from typing import Literal

from .base import Event


class RequestCompletedEvent(Event):
    """A finished request with its latency breakdown (seconds)."""

    kind: Literal["request.completed"] = "request.completed"
    request_id: str
    model: str
    instance_id: str = ""
    worker_id: str = ""
    status: Literal["ok", "error", "cancelled"]
    finish_reason: str = ""
    queue_s: float = 0.0
    load_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    total_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str = ""
    failovers: int = 0  # times the generation was resumed elsewhere after its instance died


class RequestFailoverEvent(Event):
    """A generation whose instance died mid-stream, resumed on another instance from the prompt
    plus the ``tokens`` already sent (the client's stream goes on unbroken)."""

    kind: Literal["request.failover"] = "request.failover"
    request_id: str
    model: str
    from_instance_id: str
    from_worker_id: str
    to_instance_id: str
    to_worker_id: str
    tokens: int  # generated before the failure: recomputed, not generated again
    attempt: int  # 1 for the first failover of this request
    reason: str  # why the old instance counts as gone
    wait_s: float  # from the failure to the new instance's acknowledgement
