"""How soon a silent stream has its worker checked: relative to the stream's own pace, within
a floor and the configured interval (`services.router.failover`)."""

from __future__ import annotations

import pytest

from services.router.failover import MIN_SILENCE_S, SILENCE_GAPS, Pace, silence_limit, silent

pytestmark = pytest.mark.unit


def test_the_pace_counts_gaps_from_the_second_chunk_and_not_across_a_new_producer() -> None:
    pace = Pace()
    pace.frame(10.0)  # the first chunk: after queueing and prefill, not a gap
    assert pace.gap is None
    pace.frame(10.02)
    assert pace.gap == pytest.approx(0.02)
    pace.frame(10.12)  # one slow step moves the mean a fifth of the way
    assert pace.gap == pytest.approx(0.02 + 0.2 * 0.08)
    pace.restart()  # failover: the new worker's first chunk follows a recompute
    pace.frame(12.0)
    assert pace.gap == pytest.approx(0.02 + 0.2 * 0.08)
    pace.frame(12.02)
    assert pace.gap is not None
    assert pace.gap < 0.04


def test_the_silence_limit_follows_the_pace_within_floor_and_interval() -> None:
    assert silence_limit(None, 1.0) == 1.0  # no pace yet: the interval
    assert silence_limit(0.005, 1.0) == MIN_SILENCE_S  # fast streams: the floor
    assert silence_limit(0.05, 1.0) == pytest.approx(SILENCE_GAPS * 0.05)
    assert silence_limit(0.5, 1.0) == 1.0  # slow streams: never beyond the interval
    assert silence_limit(0.05, 0.2) == 0.2  # an interval under the floor wins


def test_silent_uses_each_instances_own_limit() -> None:
    last_frame = {"fast": 10.0, "slow": 10.0, "unknown": 10.0}
    limits = {"fast": 0.3, "slow": 1.0}
    assert silent(last_frame, 10.4, 1.0, {}, limits) == ["fast"]
    assert silent(last_frame, 10.4, 1.0, {"fast": 10.2}, limits) == []  # checked 0.2 s ago
    assert silent(last_frame, 11.0, 1.0, {"fast": 10.4}, limits) == ["fast", "slow", "unknown"]
    assert silent(last_frame, 11.0, 0.0, {}, limits) == []  # off
