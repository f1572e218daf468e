"""The worker's load retry: a copy the load finds damaged is reported and the load runs once
more on what the next ensure gives; other failures, and a second damaged copy, are final."""

from __future__ import annotations

from typing import Any

import pytest

from libs.loader.errors import ChecksumMismatch, LoaderError, PartitionTruncated, ReadError
from libs.protocol.messages import EnsureReply
from services.worker.fetch import NodeStorage, load_with_fallback

pytestmark = pytest.mark.unit


class Storage(NodeStorage):
    """Ensures hand out the copies in turn; reports are recorded."""

    def __init__(self, *copies: tuple[str, str]) -> None:
        super().__init__(bus=None, node_id="n", worker_id="w", timeout=1.0)  # type: ignore[arg-type]
        self.copies = list(copies)
        self.reports: list[tuple[str, LoaderError]] = []

    async def ensure(self, model: str, checkpoint_uri: str, tier: str = "ssd") -> EnsureReply:
        tier, path = self.copies.pop(0)
        fields = {"model": model, "path": path, "tier": tier, "source_tier": tier}
        return EnsureReply.model_validate({**fields, "bytes": 1, "seconds": 0.0})

    async def report_damage(self, copy: EnsureReply, exc: LoaderError) -> bool:
        self.reports.append((copy.path, exc))
        return True


def loader(outcomes: dict[str, Exception | str]) -> Any:
    async def load(copy: EnsureReply) -> str:
        result = outcomes[copy.path]
        if isinstance(result, Exception):
            raise result
        return result

    return load


async def ensured(copy: EnsureReply, seconds: float) -> None:
    return None


async def test_a_damaged_copy_is_reported_and_the_next_ensure_is_loaded() -> None:
    storage = Storage(("dram", "/shm/m"), ("ssd", "/ssd/m"))
    bad = ChecksumMismatch("chunk checksum mismatch", path="/shm/m/part-00000.bin", offset=0)
    copy, result = await load_with_fallback(
        storage, "m", "file:///m", loader({"/shm/m": bad, "/ssd/m": "loaded"}), ensured
    )
    assert (copy.tier, copy.path, result) == ("ssd", "/ssd/m", "loaded")
    assert storage.reports == [("/shm/m", bad)]


async def test_a_second_damaged_copy_fails_the_load() -> None:
    storage = Storage(("ssd", "/a"), ("ssd", "/b"))
    short = PartitionTruncated("short", path="/b/part-00000.bin", offset=4096)
    outcomes: dict[str, Exception | str] = {"/a": ChecksumMismatch("x"), "/b": short}
    with pytest.raises(PartitionTruncated):
        await load_with_fallback(storage, "m", "file:///m", loader(outcomes), ensured)
    assert [path for path, _ in storage.reports] == ["/a"]


async def test_other_failures_are_not_retried() -> None:
    storage = Storage(("ssd", "/a"), ("ssd", "/b"))
    with pytest.raises(ReadError):
        await load_with_fallback(
            storage, "m", "file:///m", loader({"/a": ReadError("EIO")}), ensured
        )
    assert storage.reports == []
    assert storage.copies == [("ssd", "/b")]
