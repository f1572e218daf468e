"""/openapi.json without a cluster: no phantom 422, the error answers of every route, the key
where one is asked for, and error bodies that match the documented shape."""

from __future__ import annotations

from typing import Any

import pytest

from services.router.app import RouterService, create_fastapi
from services.router.errors import ApiError, from_bus, too_large, unauthorized
from services.router.openapi_doc import WHY, ErrorResponse
from services.router.settings import RouterSettings

pytestmark = pytest.mark.unit


def document(**env: str) -> dict[str, Any]:
    settings = RouterSettings.from_env({"SLLM_INSTANCE_ID": "doc", **env})
    return create_fastapi(RouterService(settings)).openapi()


def operations(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{method.upper()} {path}", op)
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
    ]


def test_no_route_documents_a_422_and_every_route_its_body_limit() -> None:
    doc = document()
    assert len(operations(doc)) >= 11
    for name, op in operations(doc):
        assert "422" not in op["responses"], name
        assert {"408", "413", "500"} <= op["responses"].keys(), name
    assert "HTTPValidationError" not in doc["components"]["schemas"]


def test_bodies_that_fail_validation_are_documented_as_400() -> None:
    for name, op in operations(document()):
        if "requestBody" in op:
            assert "400" in op["responses"], name


def test_keys_are_documented_only_where_the_router_asks_for_them() -> None:
    open_doc = document()
    assert all("security" not in op for _, op in operations(open_doc))
    keyed = document(SLLM_API_KEYS="k", SLLM_ADMIN_KEYS="a")
    secured = {name for name, op in operations(keyed) if "security" in op}
    assert "POST /v1/chat/completions" in secured
    assert "DELETE /v1/deployments/{name}" in secured
    assert {"GET /health", "GET /ready", "GET /metrics"}.isdisjoint(secured)
    for name, op in operations(keyed):
        assert ("401" in op["responses"]) == (name in secured), name


def test_ignored_and_refused_fields_are_in_the_request_schemas() -> None:
    models = document()["components"]["schemas"]
    completion = models["CompletionRequest"]["properties"]
    assert completion["user"] == {"description": "Accepted and ignored."}
    assert completion["best_of"]["enum"] == [None, 1]
    assert models["CompletionRequest"]["additionalProperties"] is False
    chat = models["ChatCompletionRequest"]["properties"]
    assert chat["modalities"]["enum"] == [None, ["text"]]


@pytest.mark.parametrize(
    "error",
    [
        ApiError(400, "bad", code="invalid_request", param="messages"),
        unauthorized("no key"),
        ApiError(403, "no"),
        too_large(10),
        ApiError(500, "bug", code="internal"),
        ApiError(504, "slow"),
    ],
)
def test_error_bodies_match_the_documented_shape(error: ApiError) -> None:
    assert error.status in WHY
    ErrorResponse.model_validate(error.body())


def test_bus_errors_answer_documented_statuses_in_the_documented_shape() -> None:
    from libs.protocol.errors import ErrorCode, error_for_code

    for code in ErrorCode:
        error = from_bus(error_for_code(code.value, "m"), retry_after=1)
        assert error.status in WHY, code
        ErrorResponse.model_validate(error.body())
