"""The answer to a placement request, on plain data (`place_policy.decide`)."""

from __future__ import annotations

import pytest

from services.scheduler.place_policy import (
    ColdStart,
    Loading,
    PlaceView,
    StartBeside,
    UseInstance,
    WaitTurn,
    decide,
)

pytestmark = pytest.mark.unit


def view(**kw: object) -> PlaceView:
    base: dict[str, object] = {"model": "m", "max_instances": 3, "free_workers": 2}
    return PlaceView(**{**base, **kw})  # type: ignore[arg-type]


def test_a_ready_instance_answers_at_once_even_beside_loads() -> None:
    decided = decide(view(ready=["r1", "r2"], loading=[Loading("l1", 5.0)], best_new_s=0.1))
    assert decided == UseInstance("r1", 0.0)


def test_a_request_waits_for_the_load_that_ends_first() -> None:
    loads = [Loading("slow", 9.0), Loading("fast", 3.0), Loading("same", 3.0)]
    assert decide(view(loading=loads, best_new_s=5.0)) == UseInstance("fast", 3.0)


def test_a_new_instance_starts_beside_a_load_only_when_it_is_ready_sooner() -> None:
    loads = [Loading("l1", 6.0)]
    assert decide(view(loading=loads, best_new_s=1.0)) == StartBeside()  # a DRAM hit elsewhere
    assert decide(view(loading=loads, best_new_s=6.0)) == UseInstance("l1", 6.0)
    assert decide(view(loading=loads, best_new_s=None)) == UseInstance("l1", 6.0)  # none free


def test_a_load_without_an_estimate_is_waited_for() -> None:
    loads = [Loading("unknown", 0.0), Loading("l2", 8.0)]
    assert decide(view(loading=loads, best_new_s=0.5)) == UseInstance("unknown", 0.0)


def test_no_instance_starts_beside_loads_past_max_instances() -> None:
    loads = [Loading("l1", 6.0), Loading("l2", 7.0)]
    assert decide(view(loading=loads, max_instances=2, best_new_s=1.0)) == UseInstance("l1", 6.0)
    assert decide(view(loading=loads, max_instances=3, best_new_s=1.0)) == StartBeside()


def test_a_start_beside_a_load_leaves_free_workers_to_models_that_waited_longer() -> None:
    loads = [Loading("l1", 6.0)]
    starved = {"old": 10.0}
    crowded = view(
        loading=loads, best_new_s=1.0, starved=starved, waiting_since=20.0, free_workers=1
    )
    assert decide(crowded) == UseInstance("l1", 6.0)  # the one free worker is old's
    roomy = view(loading=loads, best_new_s=1.0, starved=starved, waiting_since=20.0, free_workers=2)
    assert decide(roomy) == StartBeside()


def test_a_model_with_no_live_instance_cold_starts() -> None:
    assert decide(view()) == ColdStart()
    assert decide(view(free_workers=0)) == ColdStart()  # the cold start weighs busy workers


def test_a_cold_model_waits_its_turn_behind_models_that_waited_longer() -> None:
    starved = {"a": 10.0, "b": 12.0}
    assert decide(view(starved=starved, waiting_since=20.0, free_workers=2)) == WaitTurn(2)
    assert decide(view(starved=starved, waiting_since=20.0, free_workers=3)) == ColdStart()
    assert decide(view(starved=starved, waiting_since=11.0, free_workers=2)) == ColdStart()


def test_a_model_that_is_the_only_starved_one_takes_its_turn() -> None:
    assert decide(view(starved={"m": 10.0}, waiting_since=10.0, free_workers=0)) == ColdStart()


def test_a_model_whose_wait_is_unknown_goes_after_every_starved_one() -> None:
    assert decide(view(starved={"a": 10.0}, waiting_since=None, free_workers=1)) == WaitTurn(1)
    assert decide(view(starved={"a": 10.0}, waiting_since=None, free_workers=2)) == ColdStart()
