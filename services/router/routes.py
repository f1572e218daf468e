"""The HTTP routes: thin handlers that hand over to serving and deployments logic."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Request, Security
from fastapi.responses import FileResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel
from starlette.responses import Response

from .api_schema import (
    ChatCompletionRequest,
    CompletionRequest,
    ModelList,
)
from .auth import ApiKeys, Role
from .cluster_schema import ClusterOut
from .deployment_schema import (
    DeploymentDeleted,
    DeploymentIn,
    DeploymentList,
    DeploymentOut,
    DeploymentPatchIn,
)
from .embedding_schema import EmbeddingRequest, EmbeddingResponse
from .model_info import ModelDetail, model_detail
from .openapi_doc import BUS_CALL, KEYED, STATE_READ, error_answers
from .responses import ChatCompletion, Completion

if TYPE_CHECKING:
    from .app import RouterService


# Documents the key in /openapi.json; the check itself reads the header (`ApiKeys`).
BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="apiKey",
    description="An API key: `Authorization: Bearer <key>` (SLLM_API_KEYS, SLLM_ADMIN_KEYS...).",
)


def api_key_check(check: Callable[[str | None], None]) -> Callable[[Request], Awaitable[None]]:
    """One of `ApiKeys`'s checks as a FastAPI dependency."""

    async def dependency(request: Request) -> None:
        check(request.headers.get("authorization"))

    return dependency


def guarded(keys: ApiKeys, role: Role) -> tuple[list[Any], tuple[int, ...]]:
    """The dependencies of the routes of ``role`` (the key check, and the bearer scheme in the
    document where the check asks for a key) and the statuses the check may answer."""
    check = {"inference": keys.check, "admin": keys.check_admin, "metrics": keys.check_metrics}
    depends: list[Any] = [Depends(api_key_check(check[role]))]
    # As `ApiKeys`: a role's routes are open while no key that could open them is set.
    opened_by: dict[Role, tuple[Role, ...]] = {
        "inference": ("inference",),
        "admin": ("inference", "admin"),
    }
    if any(keys.has[r] for r in opened_by.get(role, (role,))):
        return [Security(BEARER), *depends], KEYED
    return depends, ()


# One event of a streamed answer (OpenAPI < 3.2: the schema of each event). Its data is a chunk
# of the answer as JSON (the answer's shape, a delta in place of the message), an error body
# as JSON, or, last, "[DONE]".
STREAM_EVENT = {
    "type": "object",
    "properties": {"data": {"type": "string"}},
    "required": ["data"],
}


def _answers(json_model: type[BaseModel], *statuses: int) -> dict[int | str, dict[str, Any]]:
    """A completion's answers: JSON, or an event stream with ``"stream": true``."""
    ok = {
        "model": json_model,
        "description": 'The answer; with `"stream": true`, server-sent events of its chunks.',
        "content": {"text/event-stream": {"schema": STREAM_EVENT}},
    }
    return {200: ok, **error_answers(*statuses)}


def v1_routes(svc: RouterService) -> APIRouter:
    inference, keyed = guarded(svc.api_keys, "inference")
    api = APIRouter(prefix="/v1", dependencies=inference)
    administration, admin_keyed = guarded(svc.api_keys, "admin")
    admin = APIRouter(prefix="/v1", dependencies=administration)

    # The hot path (`hotpath.HotPath`) answers these two; the routes document them.
    @api.post(
        "/chat/completions",
        response_model=None,
        responses=_answers(ChatCompletion, *keyed, *BUS_CALL),
    )
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await svc.serving.chat(body, request.receive)

    @api.post(
        "/completions", response_model=None, responses=_answers(Completion, *keyed, *BUS_CALL)
    )
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await svc.serving.completion(body, request.receive)

    @api.post("/embeddings", responses=error_answers(*keyed, *BUS_CALL))
    async def embeddings(body: EmbeddingRequest) -> EmbeddingResponse:
        return await svc.embeddings.create(body)

    @api.get("/models", responses=error_answers(*keyed, *STATE_READ))
    async def list_models() -> ModelList:
        return await svc.serving.models()

    @api.get("/models/{model:path}", responses=error_answers(*keyed, 404, *STATE_READ))
    async def get_model(model: str) -> ModelDetail:
        return await model_detail(svc.serving.backend, model)

    @admin.post(
        "/deployments",
        status_code=201,
        response_model=DeploymentOut,
        responses=error_answers(*admin_keyed, *BUS_CALL),
    )
    async def create_deployment(body: DeploymentIn) -> DeploymentOut:
        return await svc.deployments.create(body.spec())

    @admin.patch(
        "/deployments/{name:path}",
        responses=error_answers(*admin_keyed, *BUS_CALL),
    )
    async def patch_deployment(name: str, body: DeploymentPatchIn) -> DeploymentOut:
        return await svc.deployments.patch(name, body)

    @admin.get("/deployments", responses=error_answers(*admin_keyed, *STATE_READ))
    async def list_deployments() -> DeploymentList:
        return await svc.deployments.list()

    @admin.get("/deployments/{name:path}", responses=error_answers(*admin_keyed, 404, *STATE_READ))
    async def get_deployment(name: str) -> DeploymentOut:
        return await svc.deployments.get(name)

    @admin.delete("/deployments/{name:path}", responses=error_answers(*admin_keyed, *BUS_CALL))
    async def delete_deployment(name: str) -> DeploymentDeleted:
        return await svc.deployments.delete(name)

    both = APIRouter()
    both.include_router(api)
    both.include_router(admin)
    return both


STATIC_DIR = Path(__file__).with_name("static")


def cluster_routes(svc: RouterService) -> APIRouter:
    """``GET /v1/cluster`` (admin: it names every node, worker and model) and the status page
    that polls it (``/`` and ``/ui``, open: the page holds no data and asks for the key)."""
    administration, admin_keyed = guarded(svc.api_keys, "admin")
    admin = APIRouter(prefix="/v1", dependencies=administration)

    @admin.get("/cluster", responses=error_answers(*admin_keyed, *STATE_READ))
    async def cluster() -> ClusterOut:
        return await svc.cluster.snapshot()

    page = APIRouter(include_in_schema=False)

    @page.get("/", response_model=None)
    @page.get("/ui", response_model=None)
    async def status_page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    both = APIRouter()
    both.include_router(admin)
    both.include_router(page)
    return both
