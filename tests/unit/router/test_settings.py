"""Router settings: parsing and range checks."""

from __future__ import annotations

import pytest

from libs.common.settings import SettingsError
from services.router.settings import RouterSettings

pytestmark = pytest.mark.unit


def test_defaults() -> None:
    s = RouterSettings.from_env({})
    assert (s.queue_size, s.start_timeout, s.stream_idle_timeout) == (256, 120.0, 60.0)
    assert s.api_keys == ()


def test_api_keys_are_a_comma_separated_list_and_never_shown() -> None:
    s = RouterSettings.from_env({"SLLM_API_KEYS": "a1, b2,,"})
    assert s.api_keys == ("a1", "b2")
    assert s.public()["api_keys"] == "***"


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"SLLM_QUEUE_SIZE": "0"}, "SLLM_QUEUE_SIZE"),
        ({"SLLM_START_TIMEOUT": "0"}, "SLLM_START_TIMEOUT"),
        ({"SLLM_STREAM_IDLE_TIMEOUT": "0"}, "SLLM_STREAM_IDLE_TIMEOUT"),
        ({"SLLM_DEFAULT_MAX_TOKENS": "0"}, "SLLM_DEFAULT_MAX_TOKENS"),
        ({"SLLM_DEFAULT_MAX_TOKENS": str(2**21)}, "SLLM_DEFAULT_MAX_TOKENS"),
        ({"SLLM_RETRY_AFTER": "-1"}, "SLLM_RETRY_AFTER"),
    ],
)
def test_bad_values_are_refused(env: dict[str, str], match: str) -> None:
    with pytest.raises(SettingsError, match=match):
        RouterSettings.from_env(env)
