"""Events of a live migration: started, each round, committed, aborted."""

from __future__ import annotations

from typing import Literal

from .base import Event


class MigrationStartedEvent(Event):
    """The source began moving one generation to another worker."""

    kind: Literal["migration.started"] = "migration.started"
    migration_id: str
    request_id: str
    instance_id: str  # the source instance
    worker_id: str
    destination_instance_id: str
    destination_worker_id: str
    tokens: int  # prompt + generated tokens at the start


class MigrationRoundEvent(Event):
    """One round done: ``round`` 0 is the first prefill of everything so far, later rounds
    are catch-up deltas; ``gap`` is how many tokens the source is ahead afterwards."""

    kind: Literal["migration.round"] = "migration.round"
    migration_id: str
    request_id: str
    instance_id: str
    round: int
    tokens_sent: int
    gap: int
    seconds: float


class MigrationCommittedEvent(Event):
    """The destination took over the stream (emitted by the destination once its first frame
    is out). ``pause_s``: from the source's last published frame to the destination's first
    (wall clocks of two machines: as good as their sync). ``cancel_subject`` and ``stream_id``
    name the new producer, for a consumer that wants to cancel it."""

    kind: Literal["migration.committed"] = "migration.committed"
    migration_id: str
    request_id: str
    source_instance_id: str
    source_worker_id: str
    instance_id: str  # the destination instance, now producing
    worker_id: str
    inbox: str
    start_seq: int
    rounds: int
    tokens_recomputed: int
    pause_s: float | None = None
    cancel_subject: str = ""
    stream_id: str = ""


class MigrationAbortedEvent(Event):
    """The generation stays where it was (or, when the source died, with whoever resumes it);
    ``side`` says who gave up."""

    kind: Literal["migration.aborted"] = "migration.aborted"
    migration_id: str
    request_id: str
    instance_id: str
    side: Literal["source", "destination"]
    reason: str
