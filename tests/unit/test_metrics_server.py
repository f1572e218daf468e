"""Each service's metrics endpoint (`libs.common.metrics_server`): its address setting, its
answers to requests (keys, paths, methods), and the HTTP service discovery it feeds."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter

from libs.common.metrics_server import (
    MetricsServer,
    advertised,
    discover,
    join_addr,
    parse_addr,
    sd_groups,
)
from libs.common.settings import CommonSettings, SettingsError
from libs.protocol.messages import ServiceInfoReply
from libs.protocol.schema import encode_json

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("0.0.0.0:9101", ("0.0.0.0", 9101)),
        (":9101", ("", 9101)),
        ("scheduler:9101", ("scheduler", 9101)),
        ("[::1]:9100", ("::1", 9100)),
        ("[::]:9100", ("::", 9100)),
    ],
)
def test_addresses_parse_as_host_and_port(addr: str, expected: tuple[str, int]) -> None:
    assert parse_addr(addr) == expected


@pytest.mark.parametrize("addr", ["9100", "host", "host:", "host:port", "h:70000", "::1:9100"])
def test_bad_addresses_are_refused(addr: str) -> None:
    with pytest.raises(ValueError):
        parse_addr(addr)


def test_the_setting_is_checked_and_empty_turns_the_port_off() -> None:
    assert CommonSettings.from_env({}).metrics_addr == "127.0.0.1:0"  # any free port
    assert CommonSettings.from_env({"SLLM_METRICS_ADDR": ""}).metrics_addr == ""
    with pytest.raises(SettingsError, match="SLLM_METRICS_ADDR"):
        CommonSettings.from_env({"SLLM_METRICS_ADDR": "nine-thousand"})
    keys = CommonSettings.from_env({"SLLM_METRICS_KEYS": "a,b"})
    assert keys.metrics_keys == ("a", "b")
    assert keys.public()["metrics_keys"] == "***"  # never in events or logs


def test_the_advertised_address_is_the_bound_host_unless_it_is_a_wildcard() -> None:
    assert advertised("127.0.0.1", 9101) == "127.0.0.1:9101"
    assert advertised("scheduler", 9101) == "scheduler:9101"
    assert advertised("::1", 9101) == "[::1]:9101"
    assert join_addr("10.0.0.7", 1) == "10.0.0.7:1"
    for wildcard in ("0.0.0.0", "", "::"):
        host, port = parse_addr(advertised(wildcard, 9101))
        assert port == 9101
        assert host not in ("0.0.0.0", "", "::")  # something a scraper can reach


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("sllm_test_things", "things", registry=registry).inc(3)
    return registry


def _head(line: str, **headers: str) -> bytes:
    fields = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"{line}\r\nHost: x\r\n{fields}\r\n".encode()


def test_metrics_are_answered_in_prometheus_text_format() -> None:
    server = MetricsServer(_registry())
    status, body, headers = server.respond(_head("GET /metrics HTTP/1.1"))
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=")
    assert b"sllm_test_things_total 3.0" in body
    # Prometheus may add parameters; HEAD has the headers only.
    assert server.respond(_head("GET /metrics?x=1 HTTP/1.1"))[0] == 200
    status, body, headers = server.respond(_head("HEAD /metrics HTTP/1.1"))
    assert (status, body) == (200, b"")
    assert int(headers["Content-Length"]) > 0


@pytest.mark.parametrize(
    ("line", "status"),
    [
        ("GET / HTTP/1.1", 404),
        ("GET /metrics/x HTTP/1.1", 404),
        ("POST /metrics HTTP/1.1", 405),
        ("GET /metrics", 400),
        ("garbage", 400),
    ],
)
def test_other_requests_are_refused(line: str, status: int) -> None:
    assert MetricsServer(_registry()).respond(_head(line))[0] == status


def test_with_metrics_keys_a_scrape_needs_one() -> None:
    server = MetricsServer(_registry(), keys=("k1", "k2"))
    missing = server.respond(_head("GET /metrics HTTP/1.1"))
    assert missing[0] == 401
    assert missing[2]["WWW-Authenticate"] == "Bearer"
    for authorization in ("Bearer nope", "Basic k1", "k1", "Bearer "):
        assert server.respond(_head("GET /metrics HTTP/1.1", Authorization=authorization))[0] == 401
    for key in ("k1", "k2"):
        ok = server.respond(_head("GET /metrics HTTP/1.1", Authorization=f"Bearer {key}"))
        assert ok[0] == 200
        # Header names are case-insensitive, the scheme too.
        other = server.respond(_head("GET /metrics HTTP/1.1", authorization=f"bearer {key}"))
        assert other[0] == 200


def _info(kind: str, iid: str, node: str = "", addr: str = "") -> dict[str, Any]:
    info = ServiceInfoReply(
        kind=kind,  # type: ignore[arg-type]
        instance_id=iid,
        node_id=node,
        version="0",
        started_at=0.0,
        metrics_addr=addr,
    )
    return info.model_dump()


def test_service_discovery_lists_each_service_with_a_metrics_address() -> None:
    groups = sd_groups(
        [
            _info("scheduler", "scheduler-0", addr="127.0.0.1:41001"),
            _info("worker", "node-0-w0", node="node-0", addr="10.0.0.5:9110"),
            _info("worker", "hollow-1", node="node-1"),  # no metrics port: not a target
            _info("storage", "storage-node-0", node="node-0", addr="[::1]:9102"),
        ]
    )
    assert groups == [
        {
            "targets": ["127.0.0.1:41001"],
            "labels": {"service": "scheduler", "instance": "scheduler-0"},
        },
        {
            "targets": ["10.0.0.5:9110"],
            "labels": {"service": "worker", "instance": "node-0-w0", "node": "node-0"},
        },
        {
            "targets": ["[::1]:9102"],
            "labels": {"service": "storage", "instance": "storage-node-0", "node": "node-0"},
        },
    ]
    # The http_sd_configs format: a list of groups, each with a list of "host:port" targets
    # and string labels.
    for g in groups:
        assert set(g) == {"targets", "labels"}
        assert all(isinstance(t, str) and parse_addr(t) for t in g["targets"])
        assert all(isinstance(v, str) for v in g["labels"].values())


class FakeState:
    """`ClusterState.live_services`: the heartbeats of each kind, by instance id."""

    def __init__(self, beats: dict[str, dict[str, bytes | str]]) -> None:
        self.beats = beats

    async def live_services(self, kind: str) -> dict[str, bytes | str]:
        return self.beats.get(kind, {})


async def test_discovery_reads_the_heartbeats_of_every_kind() -> None:
    def beat(kind: str, iid: str, addr: str, node: str = "") -> bytes:
        return encode_json(
            ServiceInfoReply(
                kind=kind,  # type: ignore[arg-type]
                instance_id=iid,
                node_id=node,
                version="0",
                started_at=0.0,
                metrics_addr=addr,
            )
        )

    state = FakeState(
        {
            "router": {"router-0": beat("router", "router-0", "127.0.0.1:8343")},
            "worker": {
                "w1": beat("worker", "w1", "127.0.0.1:2", "n1"),
                "w0": beat("worker", "w0", "127.0.0.1:1", "n0"),
                "broken": b"{not json",
            },
            "storage": {"s0": beat("storage", "s0", "127.0.0.1:3", "n0")},
        }
    )
    groups = await discover(state)  # type: ignore[arg-type]
    assert [(g["labels"]["service"], g["labels"]["instance"]) for g in groups] == [
        ("router", "router-0"),
        ("worker", "w0"),
        ("worker", "w1"),
        ("storage", "s0"),
    ]
