"""The sentinel URL form (`libs/common/redis_client.py`) and what `redact_url` hides."""

from __future__ import annotations

import pytest

from libs.common.redis_client import SentinelUrl, is_sentinel_url, parse_sentinel_url
from libs.protocol.errors import redact_url

pytestmark = pytest.mark.unit


def test_a_full_sentinel_url_parses() -> None:
    url = "redis+sentinel://svc:pw@h1:26380,h2:26381,h3/sllm/2?sentinel_password=sp&sentinel_user=s"
    assert parse_sentinel_url(url) == SentinelUrl(
        sentinels=(("h1", 26380), ("h2", 26381), ("h3", 26379)),
        service="sllm",
        db=2,
        username="svc",
        password="pw",
        sentinel_username="s",
        sentinel_password="sp",
    )


def test_a_minimal_sentinel_url_parses_and_tls_is_the_double_s() -> None:
    parsed = parse_sentinel_url("rediss+sentinel://h1:1/mymaster")
    assert (parsed.sentinels, parsed.service, parsed.db, parsed.tls) == (
        (("h1", 1),),
        "mymaster",
        0,
        True,
    )
    assert is_sentinel_url("redis+sentinel://h/x")
    assert not is_sentinel_url("redis://h:6379/0")


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://u:secret@h1:1",  # no service
        "redis+sentinel://u:secret@/sllm",  # no sentinel
        "redis+sentinel://u:secret@h1:x/sllm",  # bad port
        "redis+sentinel://u:secret@h1:1/sllm/zero",  # bad db
        "redis+sentinel://u:secret@h1:1/sllm/0/more",
        "redis+sentinel://u:secret@h1:1/sllm?password=secret",  # unknown parameter
    ],
)
def test_a_malformed_sentinel_url_is_refused_without_its_password(url: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_sentinel_url(url)
    assert "secret" not in str(refused.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@h:6379/0", "redis://***@h:6379/0"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        (
            "redis+sentinel://u:pw@h1:1,h2:2/sllm/0?sentinel_user=s&sentinel_password=sp",
            "redis+sentinel://***@h1:1,h2:2/sllm/0?sentinel_user=s&sentinel_password=***",
        ),
        ("nats://a:pw@h1:4222,nats://a:pw@h2:4222", "nats://***@h1:4222,nats://***@h2:4222"),
        ("not a url", "not a url"),
    ],
)
def test_redact_url_hides_every_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown
