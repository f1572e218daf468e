"""The HA benchmark's figures: per phase by the time requests ended; recovery from the kill to
the end of the last second with a failure or a request twice as slow as the baseline's p99."""

from __future__ import annotations

import math

from benchmarks.bench_ha import Load, Phase, Sample, summarize


def _load(*samples: tuple[float, float, str]) -> Load:
    load = Load()
    for sent, done, error in samples:
        load.add(Sample(sent, done, 0.1, error))
    return load


def test_recovery_ends_with_the_last_second_that_failed_or_was_slow() -> None:
    base = [(t, t + 1.0, "") for t in range(10)]  # 1 s each: p99 1 s, slow beyond 2 s
    after = [
        (20.0, 21.0, ""),
        (20.5, 22.2, "HTTP 503: busy"),  # failed 2.2 s after the kill at 20
        (21.0, 24.5, ""),  # 3.5 s: slow, ended 4.5 s after the kill
        (25.0, 26.0, ""),
    ]
    phases = [Phase("baseline", 0.0, 15.0), Phase("kill", 20.0, 30.0, fault_at=20.0)]
    rows = summarize(_load(*base, *after), phases)
    assert (rows[0]["requests"], rows[0]["failed"], rows[0]["recovery_s"]) == (10, 0, 0.0)
    kill = rows[1]
    assert (kill["requests"], kill["failed"]) == (4, 1)
    assert kill["success"] == 0.75
    assert kill["recovery_s"] == 5.0  # the slow one ended 4.5 s after: its second ends at 5
    assert kill["errors"] == ["HTTP 503: busy"]


def test_a_fault_nobody_noticed_recovers_in_no_time() -> None:
    base = [(t, t + 1.0, "") for t in range(10)]
    phases = [Phase("baseline", 0.0, 15.0), Phase("kill", 20.0, 30.0, fault_at=20.0)]
    rows = summarize(_load(*base, (21.0, 22.0, "")), phases)
    assert rows[1]["recovery_s"] == 0.0
    assert rows[1]["failed"] == 0
    empty = summarize(_load(*base), phases)[1]
    assert empty["requests"] == 0
    assert math.isnan(float(str(empty["success"])))
