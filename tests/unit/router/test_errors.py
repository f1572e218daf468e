"""Error codes to HTTP statuses and OpenAI's error body: one table, checked here."""

from __future__ import annotations

import pytest

from libs.protocol.errors import (
    BadRequestError,
    BusError,
    BusTimeoutError,
    ConflictError,
    ErrorCode,
    InternalError,
    LoadFailedError,
    NoRespondersError,
    NotFoundError,
    OverloadedError,
    UnavailableError,
    error_for_code,
)
from services.router.errors import (
    ApiError,
    from_bus,
    to_api_error,
    unauthorized,
    validation_message,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("exc", "status", "kind"),
    [
        (BadRequestError("x"), 400, "invalid_request_error"),
        (NotFoundError("x"), 404, "invalid_request_error"),
        (ConflictError("x"), 409, "invalid_request_error"),
        (OverloadedError("x"), 429, "rate_limit_error"),
        (UnavailableError("x"), 503, "server_error"),
        (LoadFailedError("x"), 503, "server_error"),
        (NoRespondersError("x"), 503, "server_error"),
        (BusTimeoutError("x"), 504, "server_error"),
        (InternalError("x"), 500, "server_error"),
    ],
)
def test_codes_map_to_statuses(exc: BusError, status: int, kind: str) -> None:
    err = from_bus(exc, retry_after=7)
    assert err.status == status
    body = err.body()["error"]
    assert body == {"message": "x", "type": kind, "param": None, "code": exc.code.value}
    assert ("Retry-After" in err.headers) == (status in (429, 503))


def test_every_code_has_a_status() -> None:
    for code in ErrorCode:
        status = from_bus(error_for_code(code.value, "m"), retry_after=1).status
        assert 400 <= status < 600


def test_retry_after_uses_the_hint_when_given() -> None:
    assert from_bus(OverloadedError("x"), retry_after=7).headers == {"Retry-After": "7"}
    hinted = UnavailableError("x", detail={"retry_after": 30})
    assert from_bus(hinted, retry_after=7).headers == {"Retry-After": "30"}


def test_param_comes_from_the_detail() -> None:
    err = from_bus(NotFoundError("no model", detail={"param": "model"}), retry_after=1)
    assert err.body()["error"]["param"] == "model"


def test_unknown_code_from_a_newer_peer_is_500() -> None:
    assert from_bus(error_for_code("brand_new", "m"), retry_after=1).status == 500


def test_other_exceptions_are_500_without_leaking_details() -> None:
    err = to_api_error(RuntimeError("secret path /x"), retry_after=1)
    assert err.status == 500
    assert "secret" not in err.body()["error"]["message"]
    same = ApiError(418, "teapot")
    assert to_api_error(same, retry_after=1) is same


def test_unauthorized_looks_like_openai() -> None:
    err = unauthorized("invalid API key")
    assert err.status == 401
    assert err.headers == {"WWW-Authenticate": "Bearer"}
    assert err.body()["error"]["type"] == "authentication_error"
    assert err.body()["error"]["code"] == "invalid_api_key"


def test_validation_message_names_the_field_and_json_errors() -> None:
    message, param = validation_message(
        [
            {"loc": ("body", "max_tokens"), "msg": "Value error, max_tokens must be positive"},
            {"loc": ("body", "messages", 0, "role"), "msg": "Input should be 'user'"},
        ]
    )
    assert param == "max_tokens"
    assert (
        message
        == "max_tokens: max_tokens must be positive; messages.0.role: Input should be 'user'"
    )
    message, param = validation_message(
        [
            {
                "loc": ("body", 12),
                "msg": "JSON decode error",
                "type": "json_invalid",
                "ctx": {"error": "Expecting value"},
            }
        ]
    )
    assert (message, param) == ("the body is not valid JSON (Expecting value)", None)
