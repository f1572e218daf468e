"""The simulated models: checkpoint size and inference speed of each size class.

Speeds are first-order figures for one modern datacenter GPU (an A100/H100-class card) and fp16
weights: a decode step reads every weight once, so its time is about bytes / HBM bandwidth
plus a fixed step overhead; a prefill is compute-bound, 2 FLOPs per parameter per token. They
set the scale of service times next to load times; the comparison between systems does not
hinge on them (every system serves with the same speeds)."""

from __future__ import annotations

from dataclasses import dataclass

HBM_BYTES_PER_S = 1.5e12  # effective HBM bandwidth of a decode step
STEP_OVERHEAD_S = 0.006  # kernel launches, sampling, scheduling per decode step
PREFILL_FLOPS = 1.5e14  # effective fp16 FLOP/s of a prefill


@dataclass(frozen=True)
class ModelClass:
    """A size class of checkpoints (fp16: 2 bytes per parameter)."""

    label: str
    bytes: int

    @property
    def decode_s_per_token(self) -> float:
        return STEP_OVERHEAD_S + self.bytes / HBM_BYTES_PER_S

    @property
    def prefill_s_per_token(self) -> float:
        return 2 * (self.bytes / 2) / PREFILL_FLOPS


# The paper's testbed served OPT-6.7B / 13B / 30B and Llama-2 class models; in fp16 their
# checkpoints span 6.7 GB (a 3.35B model) to 66 GB (a 33B model).
CLASSES: tuple[ModelClass, ...] = (
    ModelClass("3b", int(6.7e9)),
    ModelClass("7b", int(13.4e9)),
    ModelClass("13b", int(26e9)),
    ModelClass("33b", int(66e9)),
)
BY_LABEL = {c.label: c for c in CLASSES}


@dataclass(frozen=True)
class SimModel:
    """One deployed model: its name and size class."""

    name: str
    cls: ModelClass

    @property
    def bytes(self) -> int:
        return self.cls.bytes


def model_fleet(n: int, mix: tuple[str, ...] = ("3b", "7b", "13b", "33b")) -> list[SimModel]:
    """``n`` models named ``m0000``.. with size classes taken in turn from ``mix`` (so that
    popularity, which follows the name order, is spread over the sizes)."""
    return [SimModel(f"m{i:04d}", BY_LABEL[mix[i % len(mix)]]) for i in range(n)]
