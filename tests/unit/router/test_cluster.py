"""Choosing an instance: the least loaded by our own in-flight count."""

from __future__ import annotations

import pytest

from libs.protocol.state import InstanceRecord
from services.router.cluster import least_loaded

pytestmark = pytest.mark.unit


def rec(instance_id: str) -> InstanceRecord:
    return InstanceRecord(
        instance_id=instance_id,
        model="m",
        worker_id="w-" + instance_id,
        node_id="n",
        status="ready",
        created_at=0.0,
    )


def test_least_loaded_prefers_fewest_in_flight() -> None:
    ready = [rec("a"), rec("b"), rec("c")]
    assert least_loaded(ready, {"a": 2, "b": 1, "c": 3}).instance_id == "b"  # type: ignore[union-attr]


def test_ties_break_by_id_and_idle_counts_as_zero() -> None:
    ready = [rec("c"), rec("b"), rec("a")]
    assert least_loaded(ready, {"a": 1}).instance_id == "b"  # type: ignore[union-attr]


def test_avoided_instances_are_skipped() -> None:
    ready = [rec("a"), rec("b")]
    assert least_loaded(ready, {}, avoid={"a"}).instance_id == "b"  # type: ignore[union-attr]
    assert least_loaded(ready, {}, avoid={"a", "b"}) is None
    assert least_loaded([], {}) is None


def test_an_instance_holding_the_adapter_is_preferred_unless_much_busier() -> None:
    from services.router.cluster import ADAPTER_AFFINITY

    holder = rec("b").model_copy(update={"adapters": ["lora-x"]})
    ready = [rec("a"), holder]
    assert least_loaded(ready, {"b": 1}, adapter="lora-x") is holder
    busy = {"b": ADAPTER_AFFINITY}
    assert least_loaded(ready, busy, adapter="lora-x").instance_id == "a"  # type: ignore[union-attr]
    assert least_loaded(ready, {"b": 1}).instance_id == "a"  # type: ignore[union-attr]
    assert least_loaded(ready, {"b": 1}, adapter="lora-y").instance_id == "a"  # type: ignore[union-attr]
