"""The one place that turns errors into HTTP statuses and OpenAI's error body."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import ValidationError

from libs.protocol.errors import BusError, ErrorCode

# Bus error code -> HTTP status. Codes not listed are server errors (500).
STATUS_BY_CODE: dict[ErrorCode, int] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.INVALID_CHECKPOINT: 422,
    # The request is fine; the deployment it needs failed (its reason is the message).
    ErrorCode.DEPLOYMENT_FAILED: 424,
    ErrorCode.OVERLOADED: 429,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.LOAD_FAILED: 503,
    # Nobody serves the subject: a service is down or restarting, which is transient.
    ErrorCode.NO_RESPONDERS: 503,
    ErrorCode.TIMEOUT: 504,
}

# Statuses after which a client may retry: they get a Retry-After header.
RETRYABLE = frozenset({429, 503})


def error_type(status: int) -> str:
    """OpenAI's ``error.type`` for a status (clients dispatch on the status, people read this)."""
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


@dataclass
class ApiError(Exception):
    """An HTTP error in OpenAI's shape; everything the router answers with an error becomes one."""

    status: int
    message: str
    code: str | None = None
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": error_type(self.status),
                "param": self.param,
                "code": self.code if self.code is not None else _phrase(self.status),
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_")
    except ValueError:
        return "error"


def from_bus(exc: BusError, *, retry_after: int) -> ApiError:
    """Map a typed bus error to its HTTP status, body and (for 429/503) Retry-After."""
    status = STATUS_BY_CODE.get(exc.code, 500)
    headers = {}
    if status in RETRYABLE:
        hint = exc.detail.get("retry_after")
        seconds = hint if isinstance(hint, int) and hint > 0 else retry_after
        headers["Retry-After"] = str(seconds)
    param = exc.detail.get("param")
    code = exc.detail.get("code")  # a finer code than the bus's (``deployment_exists``)
    return ApiError(
        status=status,
        message=exc.message,
        code=code if isinstance(code, str) else exc.code.value,
        param=param if isinstance(param, str) else None,
        headers=headers,
    )


def to_api_error(exc: BaseException, *, retry_after: int) -> ApiError:
    """Any exception as an `ApiError`: typed ones keep their status (a request body that fails
    validation is a 400), others are 500."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, BusError):
        return from_bus(exc, retry_after=retry_after)
    if isinstance(exc, ValidationError):
        return invalid_request(exc.errors())
    return ApiError(status=500, message=f"internal error: {type(exc).__name__}", code="internal")


def is_expected(exc: BaseException) -> bool:
    """Whether ``exc`` is one of the typed errors (not a bug to log with its traceback)."""
    return isinstance(exc, ApiError | BusError | ValidationError)


def invalid_request(errors: Sequence[Mapping[str, Any]]) -> ApiError:
    """A 400 for a request that failed validation (FastAPI's or pydantic's error list)."""
    message, param = validation_message(errors)
    return ApiError(400, message, code="invalid_request", param=param)


def unauthorized(message: str) -> ApiError:
    return ApiError(
        status=401,
        message=message,
        code="invalid_api_key",
        headers={"WWW-Authenticate": "Bearer"},
    )


def forbidden(message: str) -> ApiError:
    """A 403: the key is known but its role may not do this."""
    return ApiError(status=403, message=message, code="permission_denied")


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request body is larger than {limit} bytes", code="too_large")


def validation_message(errors: Sequence[Mapping[str, Any]]) -> tuple[str, str | None]:
    """A readable summary of pydantic/FastAPI validation errors, and the first bad field."""
    parts: list[str] = []
    param: str | None = None
    for err in errors[:5]:
        if err.get("type") == "json_invalid":
            detail = err.get("ctx", {}).get("error", "")
            parts.append(f"the body is not valid JSON ({detail})" if detail else "invalid JSON")
            continue
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        if param is None and where:
            param = where
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    more = len(errors) - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else ""), param
