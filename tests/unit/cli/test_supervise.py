"""`sllm up`'s supervision: restart delays, and one crash loop never stops anything else."""

from __future__ import annotations

import pytest

from libs.cli.supervise import Backoff, Supervised, Supervisor

pytestmark = pytest.mark.unit


def test_backoff_doubles_from_the_first_delay_up_to_the_cap() -> None:
    b = Backoff(first_s=0.5, max_s=30.0, healthy_after_s=60.0)
    assert [b.delay(n) for n in range(1, 9)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert b.delay(10_000) == 30.0  # no overflow for a process that crashes for days


def test_a_process_that_ran_a_while_counts_as_healthy_again() -> None:
    b = Backoff(first_s=1.0, max_s=30.0, healthy_after_s=60.0)
    assert b.crashes_after(5, ran_s=3.0) == 6  # crashed soon after its start: the loop goes on
    assert b.crashes_after(5, ran_s=60.0) == 1  # ran a minute: the next wait is the first one


class Scripted(Supervised):
    """A process whose life the test decides."""

    def __init__(self, name: str, backoff: Backoff, fail_starts: int = 0) -> None:
        super().__init__(backoff)
        self.name = name
        self.running = False
        self.starts = 0
        self.fail_starts = fail_starts

    def launch(self) -> None:
        self.starts += 1
        if self.fail_starts:
            self.fail_starts -= 1
            raise OSError("address in use")
        self.running = True

    def alive(self) -> bool:
        return self.running


def test_a_crash_loop_is_restarted_with_growing_delays_and_the_others_keep_running() -> None:
    said: list[str] = []
    b = Backoff(first_s=1.0, max_s=8.0, healthy_after_s=60.0)
    looping, healthy = Scripted("worker/a", b), Scripted("worker/b", b)
    for member in (looping, healthy):
        member.start()
    now = 100.0
    looping.started_at = healthy.started_at = now
    restarts_at = []
    for _ in range(7):  # seven crashes in well under a minute (the old rule stopped at six)
        looping.running = False
        now += 0.1
        looping.tick(now, said.append)  # notices the exit
        assert looping.restart_at is not None
        restarts_at.append(looping.restart_at - now)
        looping.tick(looping.restart_at - 0.01, said.append)  # not yet
        assert not looping.running
        now = looping.restart_at
        looping.tick(now, said.append)  # restarted
        healthy.tick(now, said.append)
        assert looping.running
        assert healthy.running
    assert restarts_at == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
    assert healthy.starts == 1
    assert looping.starts == 8
    assert "worker/a exited; restarting in 8.0s (7 crashes in a row)" in said


def test_a_start_that_fails_is_retried_later_not_given_up() -> None:
    said: list[str] = []
    server = Scripted("redis", Backoff(first_s=1.0, max_s=8.0), fail_starts=2)
    server.restart_at = None
    server.tick(0.0, said.append)  # never started: counts as an exit, restart in 1 s
    server.tick(1.0, said.append)  # fails: OSError
    assert said[-1] == "redis did not start: address in use"
    assert not server.running
    server.tick(1.0, said.append)  # the failed start counts as a second crash: 2 s
    assert server.restart_at == 3.0
    server.tick(3.0, said.append)  # fails again
    server.tick(3.0, said.append)
    server.tick(server.restart_at or 0.0, said.append)
    assert server.running
    assert server.starts == 3


def test_the_supervisor_ticks_every_member() -> None:
    said: list[str] = []
    members = [Scripted(f"m{i}", Backoff(first_s=0.0)) for i in range(3)]
    sup = Supervisor(members=list(members), say=said.append)
    sup.tick()  # all exited (never started): restarts scheduled at once (0 s)
    sup.tick()
    assert all(m.running for m in members)
    assert len(said) == 3
