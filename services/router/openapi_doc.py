"""What ``/openapi.json`` says beyond the request and answer models: each route's error
answers in OpenAI's error shape (as `errors.ApiError` sends them), the bearer key where a route
asks for one, and none of FastAPI's 422s (the router answers a body that fails validation with
a 400).

The document is checked against the running router by a schemathesis run
(tests/integration/test_openapi_conformance.py): a status or body shape the router sends and
this module does not document fails it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict

ErrorType = Literal[
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "rate_limit_error",
    "server_error",
]


class ErrorInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str
    type: ErrorType
    param: str | None  # the request field at fault, when one is
    code: str


class ErrorResponse(BaseModel):
    """The body of every error answer (`errors.ApiError.body`)."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorInfo


class ReadyStatus(BaseModel):
    """``/ready``: 200 when the router can serve, else 503 and why."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["ready", "unavailable"]
    detail: str


class HealthStatus(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["alive"]


WHY: dict[int, str] = {
    400: "The request is invalid: the message says why and `param` names the field.",
    401: "The API key is missing or unknown.",
    403: "The API key's role may not use this route.",
    404: "No such model or deployment.",
    408: "The request body took too long to arrive.",
    409: "The change conflicts with the cluster's state.",
    422: "The deployment's checkpoint cannot be served: the message says why.",
    424: "The model's deployment failed (its preparation): the message gives its reason.",
    413: "The request body is larger than the router's limit (SLLM_MAX_BODY_BYTES).",
    429: "Too many requests wait for this model: retry after `Retry-After` seconds.",
    500: "An internal error (a bug: the router logs it).",
    503: (
        "Unavailable for now: no worker free, a load failed, a service is restarting or the "
        "cluster state is unreachable. Retry after `Retry-After` seconds."
    ),
    504: "A service of the cluster did not answer in time.",
}

RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    }
}
AUTHENTICATE = {
    "WWW-Authenticate": {
        "description": "Always `Bearer`.",
        "required": True,
        "schema": {"type": "string"},
    }
}

# Every route: the body limit (`body_limit.BodyLimit`) reads the body first, and any bug is a 500.
ANY_ROUTE = (408, 413, 500)
KEYED = (401, 403)  # where a key is asked for (`auth.ApiKeys`)
# A request to a service of the cluster: bus error codes (`errors.STATUS_BY_CODE`).
BUS_CALL = (400, 404, 409, 422, 424, 429, 503, 504)
STATE_READ = (503,)  # a Redis read (`cluster.read`)


def error_answers(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a route for these error statuses (and those of every route)."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in sorted({*statuses, *ANY_ROUTE}):
        doc: dict[str, Any] = {"model": ErrorResponse, "description": WHY[status]}
        if status in (429, 503):
            doc["headers"] = RETRY_AFTER
        elif status == 401:
            doc["headers"] = AUTHENTICATE
        out[status] = doc
    return out


def honest_openapi(app: FastAPI) -> None:
    """Correct what FastAPI documents by itself: drop the 422 of every route with parameters or
    a body (the router's handler of `RequestValidationError` answers 400:
    `errors.invalid_request`), and the empty JSON answer it adds beside a route's own media type
    (``/metrics``: text only)."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    answers = operation.get("responses", {})
                    answers.pop("422", None)
                    content = answers.get("200", {}).get("content", {})
                    if len(content) > 1 and content.get("application/json") == {"schema": {}}:
                        del content["application/json"]
            models = schema.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                models.pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
