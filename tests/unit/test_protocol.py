"""Subjects, keys, schemas and error codes: pure, no network."""

from __future__ import annotations

import msgpack
import pytest

from libs.protocol import Keys, Subjects
from libs.protocol.endpoints import SCHED_PLACE, WORKER_GENERATE, WORKER_LOAD
from libs.protocol.errors import (
    BadReplyError,
    BadRequestError,
    ErrorCode,
    InternalError,
    NotFoundError,
    error_for_code,
)
from libs.protocol.events import EVENT_TYPES, ServiceStartedEvent
from libs.protocol.messages import GenerateRequest, SamplingParams
from libs.protocol.schema import decode, decode_json, encode, encode_json

pytestmark = pytest.mark.unit


def test_endpoint_subjects_render_under_the_root() -> None:
    assert SCHED_PLACE.subject("sllm") == "sllm.sched.place"
    assert WORKER_LOAD.subject("t1", worker_id="w-0") == "t1.worker.w-0.load"
    assert WORKER_GENERATE.params == ("worker_id",)


@pytest.mark.parametrize("bad", ["a.b", "*", ">", "with space", ""])
def test_subject_tokens_reject_wildcards_and_dots(bad: str) -> None:
    with pytest.raises(ValueError):
        WORKER_LOAD.subject("sllm", worker_id=bad)


def test_endpoint_subject_demands_exact_params() -> None:
    with pytest.raises(ValueError, match="missing"):
        WORKER_LOAD.subject("sllm")
    with pytest.raises(ValueError, match="unexpected"):
        SCHED_PLACE.subject("sllm", worker_id="x")


def test_subjects_events_and_stream_names() -> None:
    s = Subjects("t-1")
    assert s.event("instance.ready") == "t-1.events.instance.ready"
    assert s.all_events == "t-1.events.>"
    assert s.events_stream == "T_1_EVENTS"
    with pytest.raises(ValueError):
        Subjects("bad root")


def test_keys_share_one_prefix() -> None:
    k = Keys("t1")
    assert k.worker("w0") == "t1:worker:w0"
    assert k.alive("worker", "w0") == "t1:alive:worker:w0"
    assert k.alive_pattern("worker") == "t1:alive:worker:*"
    assert k.locality("node-0", "dram") == "t1:locality:node-0:dram"
    with pytest.raises(ValueError):
        k.worker("a:b")


def test_message_roundtrip_through_msgpack() -> None:
    msg = GenerateRequest(
        request_id="r1",
        model="m",
        prompt_token_ids=[1, 2, 3],
        params=SamplingParams(max_tokens=5, temperature=0.0, seed=7, stop=["\n"]),
    )
    assert decode(encode(msg), GenerateRequest) == msg


def test_decode_is_strict_about_types_unknown_fields_and_ranges() -> None:
    good = {"request_id": "r", "model": "m", "prompt_token_ids": [1]}
    assert decode(msgpack.packb(good), GenerateRequest).model == "m"
    with pytest.raises(BadRequestError, match="prompt_token_ids"):
        decode(msgpack.packb({**good, "prompt_token_ids": ["1"]}), GenerateRequest)
    with pytest.raises(BadRequestError, match="extra"):
        decode(msgpack.packb({**good, "extra": True}), GenerateRequest)
    with pytest.raises(BadRequestError, match="max_tokens"):
        decode(msgpack.packb({**good, "params": {"max_tokens": 0}}), GenerateRequest)
    with pytest.raises(BadRequestError, match="prompt_token_ids"):
        decode(msgpack.packb({**good, "prompt_token_ids": []}), GenerateRequest)


def test_decode_reports_with_the_callers_error_type() -> None:
    with pytest.raises(BadReplyError):
        decode(b"\xc1", GenerateRequest, error=BadReplyError)


def test_events_are_json_with_their_kind() -> None:
    event = ServiceStartedEvent(service="worker", version="1", source="w0")
    data = encode_json(event)
    assert b'"kind":"service.started"' in data
    assert decode_json(data, ServiceStartedEvent) == event
    assert EVENT_TYPES["service.started"] is ServiceStartedEvent


def test_error_codes_map_to_typed_exceptions() -> None:
    err = error_for_code("not_found", "no model", {"model": "m"})
    assert isinstance(err, NotFoundError)
    assert err.code is ErrorCode.NOT_FOUND
    assert err.detail == {"model": "m"}
    assert str(err) == "[not_found] no model"
    unknown = error_for_code("from_the_future", "?")
    assert isinstance(unknown, InternalError)
    assert unknown.detail["raw_code"] == "from_the_future"
    for code in ErrorCode:
        assert error_for_code(code.value, "x").code is code
