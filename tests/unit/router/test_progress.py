"""Cold-start progress as a streamed answer shows it (`services.router.progress`)."""

from __future__ import annotations

import json

from services.router.progress import Placed, comment, progress_of, settled


def test_queued_until_placed_then_fetching_from_the_registry_until_the_copy_is_there() -> None:
    assert progress_of(None, False, waiting_since=10.0, now=12.5).phase == "queued"
    assert progress_of(None, False, waiting_since=10.0, now=12.5).eta_s is None
    placed = Placed("i-1", "registry", estimated_s=4.0, at=11.0)
    fetching = progress_of(placed, False, waiting_since=10.0, now=12.0)
    assert (fetching.phase, fetching.tier, fetching.eta_s) == ("fetching", "registry", 3.0)
    assert fetching.elapsed_s == 2.0
    assert fetching.instance_id == "i-1"
    assert progress_of(placed, True, waiting_since=10.0, now=12.0).phase == "loading"


def test_a_load_from_a_tier_is_loading_and_the_eta_never_goes_negative() -> None:
    placed = Placed("i-2", "dram", estimated_s=0.5, at=0.0)
    late = progress_of(placed, False, waiting_since=0.0, now=3.0)
    assert (late.phase, late.eta_s) == ("loading", 0.0)


def test_a_progress_line_is_an_sse_comment_with_json() -> None:
    line = comment(progress_of(Placed("i-3", "ssd", 2.0, 1.0), False, 0.0, 1.5))
    assert line.startswith(b": progress ")
    assert line.endswith(b"\n\n")
    body = json.loads(line.removeprefix(b": progress ").strip())
    assert body == {
        "phase": "loading",
        "elapsed_s": 1.5,
        "tier": "ssd",
        "eta_s": 1.5,
        "instance_id": "i-3",
    }


def test_the_end_of_a_cold_start_is_not_reported_as_a_new_queue() -> None:
    loading = progress_of(Placed("i-4", "ssd", 2.0, 0.0), False, 0.0, 1.0)
    after = settled(loading, progress_of(None, False, 0.0, 2.5))
    assert (after.phase, after.tier, after.eta_s, after.elapsed_s) == ("loading", "ssd", 0.0, 2.5)
    queued = progress_of(None, False, 0.0, 0.5)
    assert settled(None, queued) == queued
    assert settled(queued, queued) == queued
