"""A NATS URL that lists a cluster's servers: split, credentials shared, redacted everywhere."""

from __future__ import annotations

import pytest

from libs.protocol.errors import redact_url
from libs.protocol.nats_urls import ServerList, cluster_size, server_list, split_urls

pytestmark = pytest.mark.unit


def test_a_comma_separated_url_lists_every_server() -> None:
    assert split_urls("nats://a:4222, nats://b:4222,,nats://c:4222 ") == [
        "nats://a:4222",
        "nats://b:4222",
        "nats://c:4222",
    ]
    assert split_urls("nats://a:4222") == ["nats://a:4222"]


def test_shared_credentials_become_connect_options_so_discovered_servers_get_them() -> None:
    listed = server_list("tls://svc:pw-1@a:4222,tls://svc:pw-1@b:4222")
    assert listed == ServerList(
        ["tls://a:4222", "tls://b:4222"], {"user": "svc", "password": "pw-1"}
    )
    assert server_list("nats://tok@a:4222,nats://tok@b:4222").auth == {"token": "tok"}


def test_urls_without_or_with_differing_credentials_are_passed_as_they_are() -> None:
    assert server_list("nats://a:4222,nats://b:4222") == ServerList(
        ["nats://a:4222", "nats://b:4222"]
    )
    mixed = "nats://u:p@a:4222,nats://v:q@b:4222"
    assert server_list(mixed) == ServerList(mixed.split(","))


def test_every_password_in_a_list_is_redacted() -> None:
    url = "nats://u:secret1@a:4222,tls://v:secret2@b:4222/,nats://c:4222"
    assert redact_url(url) == "nats://***@a:4222,tls://***@b:4222/,nats://c:4222"
    assert redact_url("redis://:pw@h:6379/0") == "redis://***@h:6379/0"
    assert redact_url("nats://h:4222") == "nats://h:4222"


def test_the_cluster_size_is_the_larger_of_the_listed_and_advertised_servers() -> None:
    assert cluster_size(["a:4222"], []) == 1  # a lone server advertises nobody
    assert cluster_size(["a:4222"], ["10.0.0.1:4222", "10.0.0.2:4222", "10.0.0.3:4222"]) == 3
    assert cluster_size(["a:1", "b:1", "c:1"], []) == 3  # servers told not to advertise
    assert cluster_size([], []) == 1
