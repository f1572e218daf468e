"""``GET /v1/models/{id}``: the model card with its deployment's status and the scheduler's
estimate of how a request would be served now (warm, or a cold start from which tier and how
long; for a LoRA adapter, its base's). An estimate the scheduler cannot give now leaves those fields null: the card itself
comes from the cluster state."""

from __future__ import annotations

import logging
from typing import Literal

from libs.protocol.endpoints import SCHED_ESTIMATE
from libs.protocol.errors import BusError, NotFoundError
from libs.protocol.messages import EstimateReply, EstimateRequest, Tier

from .api_schema import ModelCard
from .backend import Backend
from .cluster import read

log = logging.getLogger(__name__)


class ModelDetail(ModelCard):
    """``GET /v1/models/{id}``: OpenAI's model object, and how a request for it would be
    served now (clients that know only OpenAI's fields ignore the others)."""

    status: Literal["preparing", "ready", "failed"]
    error: str = ""
    warm: bool  # an instance serves it now: no cold start
    instances_ready: int
    instances_loading: int
    # Where a cold start would read the checkpoint from, and how long it would take by the
    # scheduler's calibrated estimate (null: unknown, or no worker free now).
    load_tier: Tier | None = None
    estimated_startup_s: float | None = None


async def model_detail(b: Backend, model: str) -> ModelDetail:
    spec = await read("deployments", lambda: b.view.state.get_deployment(model))
    if spec is None:
        raise NotFoundError(f"the model {model!r} does not exist", detail={"param": "model"})
    # An adapter is served by its base's instances: how a request would be served is the
    # base's answer (plus milliseconds to install the adapter when its worker lacks it).
    served_by = spec.base or spec.name
    estimate: EstimateReply | None
    try:
        estimate = await b.bus.request(
            SCHED_ESTIMATE, EstimateRequest(model=served_by), timeout=b.settings.place_timeout
        )
    except BusError as exc:
        log.info("no estimate for %s: %s", model, exc)
        estimate = None
    return ModelDetail(
        id=spec.name,
        created=int(spec.created_at),
        parent=spec.base or None,
        status=spec.status,
        error=spec.error,
        warm=bool(estimate and estimate.ready),
        instances_ready=estimate.ready if estimate else 0,
        instances_loading=estimate.loading if estimate else 0,
        load_tier=estimate.source_tier if estimate else None,
        estimated_startup_s=estimate.estimated_startup_s if estimate else None,
    )
