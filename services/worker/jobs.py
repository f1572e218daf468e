"""What the engine takes and gives: jobs in, per-job outputs (tokens, holds, pauses, failures) out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from libs.protocol.errors import BusError

from .sampling import Sampling

if TYPE_CHECKING:
    from .grammar import Grammar
    from .lora import LoadedAdapter

# "stop": an end token (eos, a stop id), reported by id, not as text; "complete": the grammar
# accepted a whole value with this token, whose text belongs to the answer; "length": max tokens.
EngineFinish = Literal["stop", "complete", "length"]


@dataclass(frozen=True)
class Job:
    """One generation: feed ``input_ids`` (prompt + ``generated`` tokens produced elsewhere),
    then produce up to ``max_new_tokens`` more. A ``hold`` job (a migration's shadow) feeds
    ``input_ids`` and produces nothing until released; its ``max_new_tokens`` is what it may
    still hold or produce, so that its KV reservation covers the whole generation."""

    input_ids: list[int]
    max_new_tokens: int
    sampling: Sampling
    hold: bool = False
    generated: int = 0
    grammar: Grammar | None = None  # the output is constrained to it (generated tokens too)
    adapter: LoadedAdapter | None = None  # a LoRA adapter on the base model (None: the base)

    @property
    def reservation(self) -> int:
        """KV tokens the job may ever need."""
        return len(self.input_ids) + self.max_new_tokens


@dataclass(frozen=True)
class Token:
    """One produced token; ``finish`` is set on the last one (see `EngineFinish`). The first
    token of a job carries its queue and prefill times."""

    token_id: int
    at: float  # time.perf_counter() when it was produced
    finish: EngineFinish | None = None
    prefill_s: float | None = None
    queue_s: float | None = None
    logprob: float | None = None
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class Failed:
    """The job ended with an error (the engine stopped, or a forward pass raised)."""

    error: BusError


@dataclass(frozen=True)
class Held:
    """A shadow job's KV cache now covers ``tokens`` input tokens (after its prefill or an
    extension); ``seconds`` is what that took."""

    tokens: int
    seconds: float


@dataclass(frozen=True)
class Paused:
    """The job stopped at a token boundary after ``produced`` tokens: nothing more comes
    until `Engine.resume` (or the job is cancelled)."""

    produced: int


Output = Token | Failed | Held | Paused
