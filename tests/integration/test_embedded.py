"""The embedded nats-server / valkey-server module used by `sllm up` and by the fixtures."""

from __future__ import annotations

import socket

import pytest
import redis

from libs.common.embedded import EmbeddedNats, EmbeddedRedis, EmbeddedServerError

pytestmark = pytest.mark.integration


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def test_redis_kill_and_restart_keeps_the_port() -> None:
    with EmbeddedRedis() as server:
        assert isinstance(server, EmbeddedRedis)
        client = redis.Redis.from_url(server.url, socket_timeout=2)
        assert client.ping()
        port = server.port
        server.kill()
        assert not _accepts(port)
        server.restart()
        assert server.port == port
        assert client.ping()  # the client's pool reconnects


def test_nats_uses_jetstream_store_in_its_data_dir() -> None:
    with EmbeddedNats() as server:
        assert server.running
        assert _accepts(server.port)
        data_dir = server.data_dir
    assert not data_dir.exists()  # temporary data dir removed on close


def test_a_taken_port_gives_a_clear_error() -> None:
    with EmbeddedRedis() as first:
        second = EmbeddedRedis(port=first.port)
        try:
            with pytest.raises(EmbeddedServerError, match="did not start"):
                second.start(timeout=2)
        finally:
            second.close()
