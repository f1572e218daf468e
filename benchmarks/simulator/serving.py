"""Instances and the requests they serve: continuous batching with a fixed number of slots
per instance (further requests wait in the instance's FIFO queue), a prefill of the prompt,
then one token per decode step at the model's pace (independent of the batch size: a
first-order model of a memory-bound decode)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from libs.protocol.messages import RunningGeneration, RunningReply

from .cluster import Node, Worker
from .events import Event
from .llms import SimModel


@dataclass
class Request:
    rid: int
    model: SimModel
    arrival: float
    prompt_tokens: int
    output_tokens: int
    instance: Instance | None = None
    start: float | None = None  # admitted into a batch slot (prefill begins)
    first_token: float | None = None
    done_at: float | None = None
    done_event: Event | None = None
    migrated: int = 0

    @property
    def ttft(self) -> float:
        assert self.first_token is not None
        return self.first_token - self.arrival

    def generated(self, now: float) -> int:
        """Tokens produced by ``now`` (the first comes with the prefill)."""
        if self.first_token is None or now < self.first_token:
            return 0
        pace = self.model.cls.decode_s_per_token
        return min(self.output_tokens, 1 + int((now - self.first_token) / pace))


@dataclass
class Instance:
    instance_id: str
    model: SimModel
    worker: Worker
    node: Node
    placed_at: float
    estimated_s: float
    slots: int
    status: Literal["loading", "ready"] = "loading"
    running: dict[int, Request] = field(default_factory=dict)
    queue: deque[Request] = field(default_factory=deque)
    idle_since: float = 0.0
    keep_until: float = 0.0
    stopping: bool = False

    @property
    def load(self) -> int:
        return len(self.running) + len(self.queue)

    @property
    def busy(self) -> bool:
        return self.load > 0

    def running_reply(self, now: float) -> RunningReply:
        """What its worker answers to ``worker.running``: every generation under way with the
        speeds it measured (the simulated speeds)."""
        c = self.model.cls
        gens = []
        for r in self.running.values():
            done = r.generated(now)
            gens.append(
                RunningGeneration(
                    request_id=str(r.rid),
                    context_tokens=r.prompt_tokens + done,
                    remaining_tokens=r.output_tokens - done,
                    prefill_tokens=r.prompt_tokens,
                    prefill_s=r.prompt_tokens * c.prefill_s_per_token,
                    decode_s_per_token=c.decode_s_per_token,
                )
            )
        return RunningReply(
            worker_id=self.worker.worker_id,
            instance_id=self.instance_id,
            model=self.model.name,
            status=self.status,
            generations=gens,
        )


def service_times(req: Request, start: float) -> tuple[float, float]:
    """(first token, last token) of ``req`` admitted at ``start``."""
    c = req.model.cls
    first = start + req.prompt_tokens * c.prefill_s_per_token
    return first, first + max(req.output_tokens - 1, 0) * c.decode_s_per_token
