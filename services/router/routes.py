"""The HTTP routes: thin handlers that hand over to serving and deployments logic."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from libs.protocol.messages import DeploymentSpec

from .api_schema import (
    ChatCompletionRequest,
    CompletionRequest,
    DeploymentDeleted,
    DeploymentList,
    DeploymentOut,
    ModelCard,
    ModelList,
)

if TYPE_CHECKING:
    from .app import RouterService


def api_key_check(check: Callable[[str | None], None]) -> Callable[[str | None], Awaitable[None]]:
    """One of `ApiKeys`'s checks as a FastAPI dependency."""

    async def dependency(authorization: str | None = Header(default=None)) -> None:
        check(authorization)

    return dependency


def v1_routes(svc: RouterService) -> APIRouter:
    keys = svc.api_keys
    api = APIRouter(prefix="/v1", dependencies=[Depends(api_key_check(keys.check))])
    admin = APIRouter(prefix="/v1", dependencies=[Depends(api_key_check(keys.check_admin))])

    @api.post("/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await svc.serving.chat(body, request.receive)

    @api.post("/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await svc.serving.completion(body, request.receive)

    @api.get("/models")
    async def list_models() -> ModelList:
        return await svc.serving.models()

    @api.get("/models/{model:path}")
    async def get_model(model: str) -> ModelCard:
        spec = await svc.deployments.get(model)
        return ModelCard(id=spec.name, created=int(spec.created_at))

    @admin.post("/deployments", status_code=201, response_model=None)
    async def put_deployment(spec: DeploymentSpec) -> JSONResponse:
        out, created = await svc.deployments.put(spec)
        return JSONResponse(out.model_dump(), status_code=201 if created else 200)

    @admin.get("/deployments")
    async def list_deployments() -> DeploymentList:
        return await svc.deployments.list()

    @admin.get("/deployments/{name:path}")
    async def get_deployment(name: str) -> DeploymentOut:
        return await svc.deployments.get(name)

    @admin.delete("/deployments/{name:path}")
    async def delete_deployment(name: str) -> DeploymentDeleted:
        return await svc.deployments.delete(name)

    both = APIRouter()
    both.include_router(api)
    both.include_router(admin)
    return both
