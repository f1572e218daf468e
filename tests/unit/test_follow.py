"""Following a callee's life: what its info answer and heartbeat say, and when absence
amounts to "gone" (`libs.common.follow`)."""

from __future__ import annotations

import pytest

from libs.common.follow import Absence, Life, judge
from libs.protocol.messages import ServiceInfoReply

pytestmark = pytest.mark.unit

LIFE = Life("storage", "storage-n0", 100.0, "n0")


def info(started_at: float, instance_id: str = "storage-n0") -> ServiceInfoReply:
    return ServiceInfoReply(
        kind="storage", instance_id=instance_id, node_id="n0", version="0", started_at=started_at
    )


def test_a_life_is_its_instance_and_start_time() -> None:
    assert LIFE.sign(info(100.0)) == "same"
    assert LIFE.sign(info(101.5)) == "other"  # restarted under the same id (storage-<node>)
    assert LIFE.sign(info(100.0, "storage-x")) == "other"
    assert LIFE.sign(None) == "absent"
    assert Life.of(info(100.0)) == LIFE


def test_another_start_time_anywhere_is_a_restart() -> None:
    for other in ("same", "absent", "unknown", "other"):
        assert judge("other", other) == "restarted"
        assert judge(other, "other") == "restarted"


def test_a_fresh_answer_outweighs_the_heartbeat_and_no_responders_outweighs_a_stale_one() -> None:
    assert judge("same", "absent") == "alive"  # the store restarted empty: still alive
    assert judge("same", "unknown") == "alive"
    assert judge("absent", "same") == "absent"  # a killed process's key outlives it
    assert judge("unknown", "absent") == "absent"  # stopped beating, and silent
    assert judge("unknown", "same") == "alive"  # busy: no answer proves nothing
    assert judge("unknown", "unknown") == "unknown"


def test_absence_must_last_the_grace_a_restart_counts_at_once() -> None:
    a = Absence(grace=1.0)
    assert a.gone("absent", 10.0) is None
    assert a.gone("unknown", 10.5) is None  # proves nothing either way
    why = a.gone("absent", 11.0)
    assert why is not None
    assert "1.0s" in why
    b = Absence(grace=1.0)
    assert b.gone("absent", 10.0) is None
    assert b.gone("alive", 10.6) is None  # a blip: absence starts over
    assert b.gone("absent", 10.9) is None
    assert b.gone("absent", 11.5) is None
    assert b.gone("absent", 11.9) is not None
    assert Absence(grace=1.0).gone("restarted", 0.0) is not None
