"""The event loop: time order, insertion order at equal times, cancellation, stop."""

from __future__ import annotations

from benchmarks.simulator.events import EventLoop


def test_events_fire_in_time_order_then_insertion_order() -> None:
    loop = EventLoop()
    seen: list[str] = []
    loop.at(2.0, lambda: seen.append("b"))
    loop.at(1.0, lambda: seen.append("a"))
    loop.at(2.0, lambda: seen.append("c"))
    loop.run()
    assert seen == ["a", "b", "c"]
    assert loop.now == 2.0
    assert loop.fired == 3


def test_callbacks_can_schedule_and_the_past_means_now() -> None:
    loop = EventLoop()
    seen: list[tuple[str, float]] = []

    def first() -> None:
        seen.append(("first", loop.now))
        loop.after(0.5, lambda: seen.append(("later", loop.now)))
        loop.at(0.0, lambda: seen.append(("past", loop.now)))

    loop.at(1.0, first)
    loop.run()
    assert seen == [("first", 1.0), ("past", 1.0), ("later", 1.5)]


def test_cancelled_events_do_not_fire() -> None:
    loop = EventLoop()
    seen: list[int] = []
    ev = loop.at(1.0, lambda: seen.append(1))
    loop.at(2.0, lambda: seen.append(2))
    ev.cancel()
    assert len(loop) == 1
    loop.run()
    assert seen == [2]


def test_run_until_leaves_later_events_and_stop_ends_the_run() -> None:
    loop = EventLoop()
    seen: list[int] = []
    loop.at(1.0, lambda: seen.append(1))
    loop.at(5.0, lambda: seen.append(5))
    loop.run(until=3.0)
    assert seen == [1]
    assert loop.now == 3.0
    loop.at(4.0, loop.stop)
    loop.run()
    assert seen == [1]  # stopped at 4.0, before 5.0
    loop.run()
    assert seen == [1, 5]
