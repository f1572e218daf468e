"""Answers ``sched.estimate``: how a request for a model would be served now, without placing
anything: instances ready and loading, and the best free worker's cold start by the calibrated
estimate (the same snapshot and ranking a placement uses)."""

from __future__ import annotations

from libs.cluster import ClusterState
from libs.protocol.errors import NotFoundError
from libs.protocol.messages import EstimateReply, EstimateRequest

from .placer import Placer


class Estimator:
    def __init__(self, state: ClusterState, placer: Placer) -> None:
        self.state = state
        self.placer = placer

    async def estimate(self, req: EstimateRequest) -> EstimateReply:
        if await self.state.get_deployment(req.model) is None:
            raise NotFoundError(f"no deployment named {req.model!r}", detail={"model": req.model})
        cluster = await self.placer.snapshot()
        live = await self.placer.live_instances(req.model, cluster)
        cluster = await self.placer.with_fresh_locality(req.model, cluster)
        ranked = self.placer.rank(req.model, cluster)
        best = ranked[0] if ranked else None
        return EstimateReply(
            model=req.model,
            ready=sum(i.status == "ready" for i in live),
            loading=sum(i.status == "loading" for i in live),
            node_id=best.node_id if best else "",
            source_tier=best.tier if best else None,
            estimated_startup_s=best.seconds if best else None,
        )
