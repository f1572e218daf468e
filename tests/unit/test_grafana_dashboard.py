"""deploy/grafana/sllm.json only asks Prometheus for metrics some service exports: every metric
name in its panels' expressions is a series of the router's, scheduler's, worker's or storage
service's registry (a renamed metric would leave a panel silently empty)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from services.router.metrics import RouterMetrics
from services.scheduler.metrics import SchedulerMetrics
from services.storage.metrics import StorageMetrics
from services.worker.metrics import WorkerMetrics

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "sllm.json"
# The series of a family, by its type (what a counter `x` or a histogram `x` is queried as).
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
    "gauge": ("",),
}
# A metric name in PromQL: an identifier that is not followed by "(" (a function), and not a
# label name (inside braces or after `by`/`without`); ours all begin with sllm_.
METRIC = re.compile(r"\bsllm_[a-zA-Z0-9_:]*")


def exported(registry: CollectorRegistry) -> set[str]:
    """Every series name the registry's families can have, observed or not."""
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + s for s in SUFFIXES.get(family.type, ("",)))
    return names


def every_service() -> set[str]:
    metrics = (RouterMetrics(), SchedulerMetrics(), WorkerMetrics(), StorageMetrics())
    return set().union(*(exported(m.registry) for m in metrics))


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def expressions(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in panels(dashboard) for t in p.get("targets", [])]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def test_every_metric_in_the_dashboard_is_exported_by_a_service(
    dashboard: dict[str, Any],
) -> None:
    known = every_service()
    used = {name for expr in expressions(dashboard) for name in METRIC.findall(expr)}
    assert len(used) > 30
    assert sorted(used - known) == []


def test_the_name_check_catches_a_wrong_suffix() -> None:
    known = every_service()
    assert "sllm_worker_generation_tokens_total" in known
    assert "sllm_worker_generation_tokens" not in known  # a counter is queried with _total
    assert "sllm_worker_load_seconds_bucket" in known
    assert "sllm_worker_load_seconds" not in known  # a histogram has no bare series
    assert "sllm_worker_kv_cache_usage_perc" in known


def test_the_dashboard_covers_each_service_and_the_asked_panels(dashboard: dict[str, Any]) -> None:
    text = "\n".join(expressions(dashboard))
    for prefix in ("sllm_router_", "sllm_scheduler_", "sllm_worker_", "sllm_storage_"):
        assert prefix in text
    titles = " | ".join(p["title"].lower() for p in panels(dashboard))
    for subject in (
        "requests",
        "errors",
        "time to first token",
        "end-to-end latency",
        "tokens per second",
        "batch size",
        "kv cache",
        "cold starts",
        "load time by tier",
        "placement latency",
        "decisions by kind",
        "estimate error",
        "bytes moved by tier",
        "capacity used",
    ):
        assert subject in titles, subject
    # Quantiles come from histograms' buckets.
    for expr in expressions(dashboard):
        if "histogram_quantile" in expr:
            assert "_bucket[" in expr, expr
            assert "by (le" in expr, expr


def test_it_is_a_standard_dashboard_on_a_prometheus_datasource_variable(
    dashboard: dict[str, Any],
) -> None:
    assert dashboard["uid"]
    assert dashboard["title"] == "sllm"
    assert isinstance(dashboard["schemaVersion"], int)
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "datasource"]
    assert (variable["type"], variable["query"]) == ("datasource", "prometheus")
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    for p in panels(dashboard):
        assert {"h", "w", "x", "y"} <= set(p["gridPos"])
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}"
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]
