"""Feedback from real loads (the I/O side of `calibration`): each placement's estimate is kept
in Redis until its load report arrives; the report becomes a calibration sample, and the
estimate's error an event and a point of the running error statistics in Redis.

Samples and errors live in Redis, not in this process, so that scheduler replicas share them
and a restarted scheduler keeps its calibration.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from redis.exceptions import RedisError

from libs.cluster import ClusterState
from libs.cluster.state import EstimateRecord
from libs.protocol import Bus
from libs.protocol.events import EstimateEvent, LoadReportEvent

from .calibration import (
    LoadSample,
    per_node,
    relative_error,
    sample_of_load,
)
from .metrics import SchedulerMetrics

log = logging.getLogger(__name__)

TIERS = ("dram", "ssd", "registry")
# An estimate whose instance never reports (it failed, or was unloaded while loading) expires.
ESTIMATE_TTL_S = 3600.0
# Relative errors kept for the error statistics (the router's /metrics reads them).
ERROR_WINDOW = 256

Calibration = tuple[dict[str, list[LoadSample]], float]  # per tier: samples; fixed seconds


class LoadFeedback:
    def __init__(
        self,
        bus: Bus,
        state: ClusterState,
        *,
        window: int,
        metrics: SchedulerMetrics | None = None,
    ) -> None:
        self.bus = bus
        self.state = state
        self.window = window
        self.metrics = metrics or SchedulerMetrics()

    async def placed(
        self, instance_id: str, model: str, node_id: str, tier: str, seconds: float
    ) -> None:
        """Remember a placement's estimate until its load reports (best effort)."""
        try:
            await self.state.put_estimate(
                instance_id, EstimateRecord(model, node_id, tier, seconds), ttl_s=ESTIMATE_TTL_S
            )
        except (RedisError, OSError) as exc:
            log.warning("estimate of %s not recorded: %r", instance_id, exc)

    async def on_report(self, ev: LoadReportEvent) -> None:
        """A finished load: calibrate, and measure the estimate's error."""
        est = await self.state.pop_estimate(ev.instance_id)
        if est is None:
            return  # another scheduler replica took it, or it expired
        sample = sample_of_load(ev.bytes, ev.seconds, ev.one_off_s, ev.phases)
        if sample is not None and self.window > 0 and ev.source_tier in TIERS:
            await self.state.add_load_sample(ev.node_id, ev.source_tier, sample, keep=self.window)
        actual = max(0.0, ev.seconds - ev.one_off_s)
        error = relative_error(est.seconds, actual)
        self.metrics.load_reported(ev.source_tier, error)
        await self.state.add_estimate_error(error, keep=ERROR_WINDOW)
        await self.bus.emit(
            EstimateEvent(
                model=ev.model,
                instance_id=ev.instance_id,
                node_id=ev.node_id,
                source_tier=ev.source_tier,
                estimated_s=est.seconds,
                actual_s=actual,
                error_ratio=error,
            )
        )

    async def calibration(self, node_ids: Sequence[str]) -> dict[str, Calibration]:
        """Per node: the load samples to calibrate each tier with, and the fixed seconds."""
        if self.window <= 0:
            return {}
        raw = await self.state.load_samples(node_ids, TIERS)
        recorded = {k: [LoadSample(*t) for t in v] for k, v in raw.items()}
        if not recorded:
            return {}
        return per_node(recorded, node_ids, TIERS)
