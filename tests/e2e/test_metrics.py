"""`sllm up`'s metrics as Prometheus finds them: the router's HTTP service discovery
(``/metrics/targets``) lists the router, the scheduler, each storage service and each worker,
every process on a port of its own, and each target answers its ``/metrics``."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from .cluster import up_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.read()


def test_discovery_lists_every_service_of_sllm_up_and_each_answers(tmp_path: Path) -> None:
    with up_cluster(tmp_path, nodes=1, workers_per_node=2, SLLM_BANDWIDTH_PROBE_MB="0") as cluster:
        want = {"router", "scheduler", "storage", "worker"}
        deadline = time.monotonic() + 30
        while True:
            status, body = _get(cluster.base_url + "/metrics/targets")
            assert status == 200
            groups: list[dict[str, Any]] = json.loads(body)
            kinds = [g["labels"]["service"] for g in groups]
            if want <= set(kinds) and kinds.count("worker") == 2:
                break
            assert time.monotonic() < deadline, groups
            time.sleep(0.5)
        targets = [t for g in groups for t in g["targets"]]
        assert len(targets) == len(set(targets))  # a port each, no collision
        assert f"127.0.0.1:{cluster.port}" in targets  # the router's own /metrics
        for group in groups:
            kind = group["labels"]["service"]
            if kind in ("worker", "storage"):
                assert group["labels"]["node"] == "node-0"
            (target,) = group["targets"]
            status, text = _get(f"http://{target}/metrics")
            assert status == 200
            assert f"sllm_{kind}_".encode() in text, kind
