"""What a hollow node pretends (pure): tier bandwidths and capacities, the load and token
timings, a checkpoint's size (carried in its URI), and the marker with which a hollow worker
tells the client how much of its time to first token was simulated."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Literal

GB = 1_000_000_000
# A hollow checkpoint's URI ends in its size: ``file:///<registry>/<model>/<bytes>``.
_SIZE = re.compile(r"/(\d+)/?$")
# The first chunk's text of a hollow generation: ``⟦sim {"prefill_s": ..}⟧``.
_MARK = re.compile(r"⟦sim (\{.*?\})⟧")


@dataclass(frozen=True)
class NodeSpec:
    """One hollow node's hardware, as its storage service and workers simulate it."""

    registry_gbps: float = 2.0  # registry -> SSD copy
    ssd_gbps: float = 6.0  # SSD -> GPU read (and SSD -> DRAM promotion)
    dram_gbps: float = 24.0  # DRAM -> GPU read
    ssd_capacity_gb: float = 2000.0
    dram_capacity_gb: float = 200.0
    load_overhead_s: float = 0.05  # fixed cost of every load (engine start)

    def bandwidth(self, tier: Literal["registry", "ssd", "dram"]) -> float:
        """Bytes per second of ``tier``."""
        gbps = {"registry": self.registry_gbps, "ssd": self.ssd_gbps, "dram": self.dram_gbps}
        return gbps[tier] * GB


@dataclass(frozen=True)
class TokenSpec:
    """How fast a hollow instance produces tokens."""

    prefill_tokens_per_s: float = 8000.0
    prefill_fixed_s: float = 0.005
    decode_s_per_token: float = 0.01

    def prefill_s(self, prompt_tokens: int) -> float:
        return self.prefill_fixed_s + prompt_tokens / self.prefill_tokens_per_s


def checkpoint_uri(registry: str, model: str, nbytes: int) -> str:
    """The URI of a hollow checkpoint of ``nbytes`` under the ``registry`` directory."""
    return f"file://{registry.rstrip('/')}/{model}/{nbytes}"


def checkpoint_bytes(uri: str, default: int = 4 * GB) -> int:
    """The size a hollow checkpoint's URI carries (``default`` for any other URI)."""
    m = _SIZE.search(uri)
    return int(m.group(1)) if m else default


def fake_prompt_ids(text: str) -> list[int]:
    """Made-up token ids, about one per four characters (at least one)."""
    return [(ord(c) * 31 + i) % 50_000 for i, c in enumerate(text[::4])] or [0]


@dataclass(frozen=True)
class SimMark:
    """What a hollow worker simulated for one request: the load it waited for (``ready_at``,
    wall clock, and how much of that load was simulated sleep) and its prefill."""

    ready_at: float
    load_sim_s: float
    prefill_s: float

    def text(self) -> str:
        body = {
            "ready_at": self.ready_at,
            "load_sim_s": self.load_sim_s,
            "prefill_s": self.prefill_s,
        }
        return f"⟦sim {json.dumps(body)}⟧"

    @classmethod
    def parse(cls, text: str) -> SimMark | None:
        m = _MARK.search(text)
        if m is None:
            return None
        d = json.loads(m.group(1))
        return cls(float(d["ready_at"]), float(d["load_sim_s"]), float(d["prefill_s"]))

    def simulated_s(self, sent_at: float) -> float:
        """The simulated part of the TTFT of a request sent at ``sent_at`` (wall clock): its
        prefill, plus the part of the instance's load it waited for, at most the simulated
        sleep of that load (the rest of the load, bus and Redis work, is overhead)."""
        waited = max(0.0, self.ready_at - sent_at)
        return min(waited, self.load_sim_s) + self.prefill_s
