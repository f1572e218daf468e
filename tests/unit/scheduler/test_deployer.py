"""A deployment's status after its preparation (`services.scheduler.deployer.outcome`)."""

from __future__ import annotations

from libs.protocol.errors import (
    BusTimeoutError,
    CorruptError,
    InvalidCheckpointError,
    StorageFullError,
    UnavailableError,
)
from services.scheduler.deployer import outcome
from services.scheduler.prefetch import Prefetched


def test_nothing_tried_or_any_copy_made_is_ready() -> None:
    assert outcome(Prefetched()) == ("ready", "")
    one_of_two = Prefetched(
        targets=("a", "b"), copied=("a",), errors=(CorruptError("b: bad chunk"),)
    )
    assert outcome(one_of_two) == ("ready", "")


def test_every_copy_failing_for_good_fails_the_deployment_with_the_reason() -> None:
    done = Prefetched(
        targets=("a", "b"),
        errors=(UnavailableError("registry down"), InvalidCheckpointError("no tokenizer")),
    )
    assert outcome(done) == ("failed", "no tokenizer")


def test_failures_that_may_pass_leave_it_ready_for_a_cold_start_to_try_again() -> None:
    done = Prefetched(
        targets=("a", "b"),
        errors=(BusTimeoutError("slow"), StorageFullError("DRAM full")),
    )
    assert outcome(done) == ("ready", "")
