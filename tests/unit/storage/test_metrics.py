"""The storage service's metrics: bytes by tier and by what moved them, the tiers' use."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.storage.lru import TierCatalog, TierEntry
from services.storage.metrics import StorageMetrics

pytestmark = pytest.mark.unit


def value(m: StorageMetrics, name: str, **labels: str) -> float:
    found = m.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def test_copies_and_evictions_count_bytes_by_tier() -> None:
    m = StorageMetrics()
    m.copied("ssd", "registry", 1000, 2.0)
    m.copied("dram", "ssd", 1000, 0.1)
    m.removed("dram", "lru", 400)
    m.served("registry")
    m.served("dram")
    m.served("dram")
    assert value(m, "sllm_storage_fetched_bytes_total", tier="ssd") == 1000
    assert value(m, "sllm_storage_promoted_bytes_total", tier="dram") == 1000
    assert value(m, "sllm_storage_fetched_bytes_total", tier="dram") == 0
    assert value(m, "sllm_storage_evicted_bytes_total", tier="dram", reason="lru") == 400
    assert (
        value(m, "sllm_storage_fetch_duration_seconds_count", tier="ssd", source_tier="registry")
        == 1
    )
    assert value(m, "sllm_storage_ensure_requests_total", source_tier="dram") == 2


def test_capacity_and_use_are_read_off_the_catalogs(tmp_path: Path) -> None:
    dram = TierCatalog("dram", tmp_path, 10_000)
    ssd = TierCatalog("ssd", tmp_path, None)  # unbounded: the file system's size
    m = StorageMetrics()
    m.watch((ssd, dram))
    assert value(m, "sllm_storage_used_bytes", tier="dram") == 0
    dram.add(TierEntry("a", tmp_path / "a", 3000, "file:///a"))
    dram.reserve(500)
    assert value(m, "sllm_storage_used_bytes", tier="dram") == 3500
    assert value(m, "sllm_storage_capacity_bytes", tier="dram") == 10_000
    assert value(m, "sllm_storage_checkpoints", tier="dram") == 1
    assert value(m, "sllm_storage_capacity_bytes", tier="ssd") > 0
