"""The monitoring news of a worker's loads: starting, each phase, ready with its report."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from libs.protocol import Bus
from libs.protocol.events import (
    Event,
    InstanceReadyEvent,
    InstanceStartingEvent,
    LoadPhaseEvent,
    LoadReportEvent,
)
from libs.protocol.messages import Tier

if TYPE_CHECKING:
    from .hosting import Hosted

log = logging.getLogger(__name__)


class LoadNews:
    """Publishes what a worker's loads do (`instance.starting`, `load.phase`, `instance.ready`,
    `load.report`), with the worker as their source."""

    def __init__(self, bus: Bus, *, worker_id: str, node_id: str) -> None:
        self.bus = bus
        self.worker_id = worker_id
        self.node_id = node_id

    async def emit(self, event: Event) -> None:
        await self.bus.emit(event.model_copy(update={"source": self.worker_id}))

    async def starting(self, hosted: Hosted) -> None:
        await self.emit(
            InstanceStartingEvent(
                instance_id=hosted.instance_id,
                model=hosted.model,
                worker_id=self.worker_id,
                node_id=self.node_id,
            )
        )

    async def phase(
        self, hosted: Hosted, phase: str, seconds: float, nbytes: int = 0, tier: str = ""
    ) -> None:
        """One phase of the load took ``seconds`` (added up for the load's report)."""
        hosted.phases[phase] = hosted.phases.get(phase, 0.0) + seconds
        hosted.load_bytes = max(hosted.load_bytes, nbytes)
        await self.emit(
            LoadPhaseEvent(
                instance_id=hosted.instance_id,
                model=hosted.model,
                worker_id=self.worker_id,
                phase=phase,
                seconds=seconds,
                bytes=nbytes,
                tier=tier,
            )
        )

    async def ready(self, hosted: Hosted, source_tier: Tier, load_s: float) -> None:
        """The instance is ready: say so, then report the load (what calibration learns from)."""
        await self.emit(
            InstanceReadyEvent(
                instance_id=hosted.instance_id,
                model=hosted.model,
                worker_id=self.worker_id,
                node_id=self.node_id,
                source_tier=source_tier,
                load_s=load_s,
            )
        )
        log.info("instance %s of %s ready in %.3fs", hosted.instance_id, hosted.model, load_s)
        await self.emit(
            LoadReportEvent(
                instance_id=hosted.instance_id,
                model=hosted.model,
                worker_id=self.worker_id,
                node_id=self.node_id,
                source_tier=source_tier,
                bytes=hosted.load_bytes,
                seconds=load_s,
                one_off_s=hosted.phases.get("startup", 0.0),
                phases=dict(hosted.phases),
            )
        )
