"""Base classes of every bus message, and the msgpack / JSON codecs with validation."""

from __future__ import annotations

import json
from typing import Any, Literal, TypeVar

import msgpack
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import BadRequestError, BusError

M = TypeVar("M", bound="Message")

# A generous bound: token lists and checkpoint manifests fit; a garbage length prefix does not
# make msgpack allocate gigabytes.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class Message(BaseModel):
    """A typed bus message: frozen, strict types, unknown fields rejected.

    Strictness is deliberate: a peer that sends ``"8"`` for an int or an extra field is a bug
    we want to see as a ``bad_request`` reply, not silently coerce.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ErrorBody(Message):
    """The body of an error reply (the code is also in a header for non-sllm tooling)."""

    code: str
    message: str
    detail: dict[str, Any] = Field(default_factory=dict)


def error_body(exc: BusError) -> ErrorBody:
    """The wire form of a typed error (details made msgpack-safe whatever a handler put there)."""
    detail = {
        str(k): v if isinstance(v, str | int | float | bool) else repr(v)
        for k, v in exc.detail.items()
    }
    return ErrorBody(code=exc.code.value, message=exc.message, detail=detail)


class StreamFrame(Message):
    """One frame of a streamed reply, published to the caller's inbox.

    ``seq`` increases by one per frame across the whole stream, including after the stream
    moves to another producer (migration, failover): the reader drops duplicates by ``seq``.
    """

    seq: int = Field(ge=0)
    # "last": a data frame that also ends the stream (saves the separate "end" frame).
    kind: Literal["data", "last", "end", "error"]
    data: dict[str, Any] | None = None
    error: ErrorBody | None = None


class CancelStream(Message):
    """Asks a stream's producer to stop (the consumer went away)."""

    stream_id: str


def _summarise(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "<message>"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def pack(obj: Any) -> bytes:
    """msgpack-encode plain data (bin type for bytes, str for text)."""
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def unpack(data: bytes, *, error: type[BusError] = BadRequestError) -> Any:
    """msgpack-decode bytes, raising ``error`` (typed) on anything malformed."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise error(f"message of {len(data)} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise error(f"undecodable msgpack ({type(exc).__name__}: {exc})") from None


def encode(msg: Message) -> bytes:
    """Encode a message as msgpack."""
    return pack(msg.model_dump(mode="python"))


def validate(obj: Any, cls: type[M], *, error: type[BusError] = BadRequestError) -> M:
    """Validate already-decoded data against a schema, raising ``error`` with a summary."""
    if not isinstance(obj, dict):
        raise error(f"{cls.__name__}: expected a map, got {type(obj).__name__}")
    try:
        return cls.model_validate(obj)
    except ValidationError as exc:
        raise error(f"{cls.__name__}: {_summarise(exc)}") from None


def decode(data: bytes, cls: type[M], *, error: type[BusError] = BadRequestError) -> M:
    """Decode msgpack bytes into ``cls``; malformed bytes or a schema violation raise ``error``."""
    return validate(unpack(data, error=error), cls, error=error)


def encode_json(msg: Message) -> bytes:
    """Encode a message as JSON (events: readable by any NATS subscriber without our code)."""
    return msg.model_dump_json().encode()


def decode_json(data: bytes | str, cls: type[M], *, error: type[BusError] = BadRequestError) -> M:
    """Decode a JSON message; like `decode`. JSON has no bytes type, so strictness is relaxed
    only where JSON forces it (pydantic's JSON mode)."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise error(f"undecodable JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise error(f"{cls.__name__}: expected an object, got {type(obj).__name__}")
    try:
        return cls.model_validate_json(data)
    except ValidationError as exc:
        raise error(f"{cls.__name__}: {_summarise(exc)}") from None
