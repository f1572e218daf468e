"""The scheduler's copy of the deployments, written back to a store that lost its data."""

from __future__ import annotations

import pytest

from libs.protocol.messages import DeploymentSpec
from services.scheduler.deployment_book import DeploymentBook

pytestmark = pytest.mark.unit


def spec(name: str, uri: str = "file:///models/x") -> DeploymentSpec:
    return DeploymentSpec(name=name, checkpoint_uri=uri)


def test_the_book_follows_this_schedulers_changes() -> None:
    book = DeploymentBook()
    book.put(spec("b"))
    book.put(spec("a"))
    book.put(spec("a", "file:///models/y"))
    book.delete("b")
    book.delete("never")
    assert [(s.name, s.checkpoint_uri) for s in book.specs()] == [("a", "file:///models/y")]


def test_a_read_of_the_same_store_drops_what_another_scheduler_deleted() -> None:
    book = DeploymentBook()
    book.put(spec("a"))
    book.put(spec("b"))
    book.refresh([spec("b"), spec("c")], same_store=True)
    assert [s.name for s in book.specs()] == ["b", "c"]


def test_a_read_of_a_store_that_restarted_empty_forgets_nothing() -> None:
    book = DeploymentBook()
    book.put(spec("a"))
    book.put(spec("b"))
    book.refresh([], same_store=False)  # the store lost its data between the epoch reads
    assert [s.name for s in book.specs()] == ["a", "b"]
    book.refresh([spec("c")], same_store=False)
    assert [s.name for s in book.specs()] == ["a", "b", "c"]
