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


async def test_following_ends_even_when_the_watch_loses_its_cancellation() -> None:
    """As in CI: the call ends while the watch is mid-check, and the check's reply lands with
    the cancellation, which Python 3.11's wait_for then drops. `follow` must still return."""
    import asyncio

    from libs.common.follow import Peers

    peers = Peers(None, None, None, "storage", interval=0.01)  # type: ignore[arg-type]
    checks = 0

    async def check(life: Life) -> str:
        nonlocal checks
        checks += 1
        try:
            await asyncio.sleep(0.3)
        except asyncio.CancelledError:
            return "alive"  # the reply that landed with the cancellation, as wait_for does
        return "alive"

    peers.check = check  # type: ignore[method-assign,assignment]

    async def call() -> str:
        await asyncio.sleep(0.05)  # ends while the watch is inside a check
        return "reply"

    assert await asyncio.wait_for(peers.follow(call(), LIFE), 5) == "reply"
    assert checks >= 1


async def test_cancel_all_cancels_again_a_task_that_swallowed_its_cancellation() -> None:
    import asyncio

    from libs.common.follow import cancel_all

    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed > 1:
                    raise

    task = asyncio.ensure_future(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_all(task), 5)
    assert task.cancelled()
    assert swallowed == 2
