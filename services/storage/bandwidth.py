"""Robust running bandwidth estimates (median of recent samples) and progress throttling."""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field

# Below this, a transfer measures per-file overheads (and one-off costs such as the first
# conversion's imports) rather than bandwidth. Such samples are ignored: an estimate off by
# orders of magnitude misleads the scheduler far more than its priors do.
MIN_SAMPLE_BYTES = 64 << 20


@dataclass
class BandwidthEstimator:
    """Median of the last ``window`` throughput samples (bytes/s): one odd transfer (a cold
    cache, a busy disk) moves it little, a lasting change moves it within a few samples."""

    window: int = 8
    min_bytes: int = MIN_SAMPLE_BYTES
    _samples: deque[float] = field(default_factory=deque, repr=False)

    def add(self, nbytes: int, seconds: float) -> bool:
        """Record a transfer; returns True if the estimate may have changed."""
        if nbytes < self.min_bytes or seconds <= 0:
            return False
        self._samples.append(nbytes / seconds)
        while len(self._samples) > self.window:
            self._samples.popleft()
        return True

    def seed(self, bytes_per_s: float) -> None:
        """Start from a previous estimate (from Redis) until real samples arrive."""
        if bytes_per_s > 0 and not self._samples:
            self._samples.append(bytes_per_s)

    @property
    def value(self) -> float | None:
        if self._samples:
            return float(statistics.median(self._samples))
        return None


@dataclass
class ProgressThrottle:
    """Decides when a long copy reports progress: every ``interval`` seconds or ``step`` of the
    total, whichever comes first, and never twice for the same byte count."""

    total: int
    interval: float = 0.5
    step: float = 0.1
    _last_t: float | None = None
    _last_bytes: int = 0

    def due(self, done: int, now: float) -> bool:
        if done <= self._last_bytes:
            return False
        if self._last_t is None:
            self._last_t = now  # the clock starts with the first bytes, not with the object
        elif (
            now - self._last_t < self.interval
            and done - self._last_bytes < self.step * max(self.total, 1)
            and done < self.total
        ):
            return False
        self._last_t, self._last_bytes = now, done
        return True
