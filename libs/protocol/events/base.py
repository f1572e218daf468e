"""The base of every monitoring event, and the kind an event class publishes under."""

from __future__ import annotations

import time

from pydantic import Field

from ..schema import Message


class Event(Message):
    """Base of every event: its kind (also the subject suffix), when, and who published it."""

    kind: str
    ts: float = Field(default_factory=time.time)
    source: str = ""


def event_kind(cls: type[Event]) -> str:
    """The kind an event class publishes under (its ``kind`` field's default)."""
    default = cls.model_fields["kind"].default
    if not isinstance(default, str) or not default:
        raise TypeError(f"{cls.__name__} must give `kind` a Literal default")
    return default
