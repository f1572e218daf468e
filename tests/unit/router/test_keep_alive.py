"""Ollama-style ``keep_alive`` on completion requests: seconds or a duration string."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.router.api_schema import ChatCompletionRequest, CompletionRequest
from services.router.keep_alive import parse_keep_alive

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        (30, 30.0),
        (0, 0.0),
        (2.5, 2.5),
        ("30", 30.0),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("500ms", 0.5),
        ("0", 0.0),
        (-1, -1.0),
        ("-1", -1.0),
        ("-5m", -1.0),
    ],
)
def test_keep_alive_accepts_seconds_and_durations(value: object, seconds: float | None) -> None:
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value", ["", "soon", "5 minutes", "5d", "1h30", True, [1], "nan"])
def test_keep_alive_rejects_what_is_not_a_duration(value: object) -> None:
    with pytest.raises(ValueError, match="keep_alive"):
        parse_keep_alive(value)


def test_keep_alive_is_bounded() -> None:
    with pytest.raises(ValueError, match="at most"):
        parse_keep_alive("10000h")


def test_request_bodies_carry_keep_alive() -> None:
    chat = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "keep_alive": "5m"}
    )
    assert chat.keep_alive == 300.0
    plain = CompletionRequest.model_validate({"model": "m", "prompt": "hi"})
    assert plain.keep_alive is None
    with pytest.raises(ValidationError, match="keep_alive"):
        CompletionRequest.model_validate({"model": "m", "prompt": "hi", "keep_alive": "later"})
