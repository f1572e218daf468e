"""What every generation of the router shares (`Backend`): the bus, the cluster view, cold starts
and metrics, and the generations streaming now, by instance and by request, so that an
instance's end or a live migration's hand-over reaches them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from libs.protocol import Bus
from libs.protocol.errors import UnavailableError

from .cluster import ClusterView
from .cold_queue import ColdQueue
from .demand import DemandTracker
from .metrics import RouterMetrics
from .settings import RouterSettings

if TYPE_CHECKING:
    from .generation import Generation

# How long an instance found dead stays out of the ready list (ids are never reused).
DEAD_S = 600.0


@dataclass
class Backend:
    """What every generation shares: the bus, the cluster view, cold starts, metrics."""

    bus: Bus
    view: ClusterView
    starts: ColdQueue
    metrics: RouterMetrics
    settings: RouterSettings
    source: str
    # Generations streaming from each instance, so that the instance's end can end them.
    streaming: dict[str, set[Generation]] = field(default_factory=dict)
    demand: DemandTracker | None = None  # the autoscaler's demand signal
    # Started generations by request id (a migration names its request).
    by_request: dict[str, Generation] = field(default_factory=dict)

    async def instance_gone(self, instance_id: str, why: str) -> None:
        """End the streams of an instance that stopped or failed, instead of letting each
        wait for the idle timeout (a dead worker sends nothing more); each then fails over."""
        self.view.suspect(instance_id, DEAD_S)
        for gen in list(self.streaming.get(instance_id, ())):
            await gen.abort(UnavailableError(f"instance {instance_id} ended: {why}"))

    async def migrated(
        self,
        request_id: str,
        *,
        inbox: str,
        instance_id: str,
        worker_id: str,
        cancel_subject: str = "",
        stream_id: str = "",
    ) -> None:
        """A hint that a live migration moved a generation's stream (its monitoring event):
        the stream announces the hand-over itself and the generation follows that (see
        `Generation.follow`); the event may only come first. Ignored when the generation has
        since moved on (failover: another inbox)."""
        gen = self.by_request.get(request_id)
        if gen is None or gen.inbox != inbox:
            return
        await gen.follow(instance_id, worker_id, cancel_subject, stream_id)
