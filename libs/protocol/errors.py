"""Error codes that cross the bus, and the typed exceptions a caller sees for each."""

from __future__ import annotations

import ssl
from enum import StrEnum
from typing import ClassVar


class ErrorCode(StrEnum):
    """Every error code a service may put in an error reply.

    The router alone maps these to HTTP statuses; services only speak codes.
    """

    BAD_REQUEST = "bad_request"  # undecodable bytes or a schema violation
    NOT_FOUND = "not_found"  # unknown model, worker, request id...
    CONFLICT = "conflict"  # the target is in a state that forbids the action
    OVERLOADED = "overloaded"  # a bounded queue or slot table is full
    UNAVAILABLE = "unavailable"  # no capacity / dependency down; retry later
    TIMEOUT = "timeout"  # a deadline passed (caller side or inside the service)
    NO_RESPONDERS = "no_responders"  # nobody serves the subject
    CANCELLED = "cancelled"  # the work was cancelled
    LOAD_FAILED = "load_failed"  # a checkpoint could not be loaded
    STORAGE_FULL = "storage_full"  # a storage tier has no room
    CORRUPT = "corrupt"  # data failed verification
    INVALID_CHECKPOINT = "invalid_checkpoint"  # a deployment's checkpoint cannot be served
    DEPLOYMENT_FAILED = "deployment_failed"  # the model's deployment failed its preparation
    BAD_REPLY = "bad_reply"  # the caller could not decode what came back
    INTERNAL = "internal"  # a bug: the handler raised something unexpected


class BusError(Exception):
    """Base of every error raised by the bus layer or carried in an error reply."""

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL

    def __init__(self, message: str, *, detail: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail: dict[str, object] = dict(detail or {})

    def __str__(self) -> str:
        return f"[{self.code.value}] {self.message}"


class BadRequestError(BusError):
    code = ErrorCode.BAD_REQUEST


class NotFoundError(BusError):
    code = ErrorCode.NOT_FOUND


class ConflictError(BusError):
    code = ErrorCode.CONFLICT


class OverloadedError(BusError):
    code = ErrorCode.OVERLOADED


class UnavailableError(BusError):
    code = ErrorCode.UNAVAILABLE


class BusTimeoutError(BusError):
    code = ErrorCode.TIMEOUT


class NoRespondersError(BusError):
    code = ErrorCode.NO_RESPONDERS


class CancelledError(BusError):
    code = ErrorCode.CANCELLED


class LoadFailedError(BusError):
    code = ErrorCode.LOAD_FAILED


class StorageFullError(BusError):
    code = ErrorCode.STORAGE_FULL


class CorruptError(BusError):
    code = ErrorCode.CORRUPT


class InvalidCheckpointError(BusError):
    """A deployment's checkpoint is not something the cluster can serve (missing, unreadable,
    not a model transformers can build, no working tokenizer)."""

    code = ErrorCode.INVALID_CHECKPOINT


class DeploymentFailedError(BusError):
    """A request for a model whose deployment failed: the deployment's reason, at once."""

    code = ErrorCode.DEPLOYMENT_FAILED


class BadReplyError(BusError):
    code = ErrorCode.BAD_REPLY


class InternalError(BusError):
    code = ErrorCode.INTERNAL


_BY_CODE: dict[ErrorCode, type[BusError]] = {
    cls.code: cls
    for cls in (
        BadRequestError,
        NotFoundError,
        ConflictError,
        OverloadedError,
        UnavailableError,
        BusTimeoutError,
        NoRespondersError,
        CancelledError,
        LoadFailedError,
        StorageFullError,
        CorruptError,
        InvalidCheckpointError,
        DeploymentFailedError,
        BadReplyError,
        InternalError,
    )
}


def error_for_code(code: str, message: str, detail: dict[str, object] | None = None) -> BusError:
    """Build the typed exception for a code received on the wire.

    An unknown code (a newer peer) becomes an `InternalError` that keeps the raw code.
    """
    try:
        cls = _BY_CODE[ErrorCode(code)]
    except ValueError:
        detail = {**(detail or {}), "raw_code": code}
        cls = InternalError
    return cls(message, detail=detail)


class CredentialsError(Exception):
    """NATS or Redis refused this process's credentials: a configuration error, reported
    once and clearly (never retried as if the server were merely down)."""


def redact_url(url: str) -> str:
    """``url`` without its user and password, and without the value of any query parameter
    naming a password (a sentinel's: ``?sentinel_password=``), for logs and error texts. A
    comma-separated list of URLs (NATS servers) has each one redacted."""
    if url.count("://") > 1 and "," in url:
        return ",".join(redact_url(part) for part in url.split(","))
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    rest, q, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    if query:
        query = "&".join(_redact_param(param) for param in query.split("&"))
    return f"{scheme}://{netloc}{slash}{path}{q}{query}"


def _redact_param(param: str) -> str:
    name, eq, _ = param.partition("=")
    return f"{name}=***" if eq and "pass" in name.lower() else param


class StreamHandedOver(Exception):
    """Raised by a stream's chunk iterator when another producer continues the stream (a live
    migration): the producer stops without sending an end, last or error frame."""


def is_tls_failure(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a failed TLS handshake or verification: a
    configuration error, not an outage."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLError | ssl.CertificateError):
            return True
        text = str(cur)
        if "CERTIFICATE_VERIFY_FAILED" in text or ("SSL" in text and "handshake" in text):
            return True
        cur = cur.__cause__ or cur.__context__
    return False
