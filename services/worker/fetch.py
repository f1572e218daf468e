"""The worker's side of its node's storage: ensure a copy of the checkpoint, load it, and when
the load finds that copy damaged, report it (the storage service checks the claim and
quarantines the copy) and load once more from what the next ensure gives: another tier's
copy, or a fresh one from the registry. A damaged copy costs one retry, never wrong weights,
and never a model that fails on this node for good.

Every request follows the storage service's life (`libs.common.follow`): if it dies or restarts
mid-fetch (`sllm up` restarts it), the request fails within seconds and is asked again of the
restarted service, instead of waiting for the load's whole timeout."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

from libs.common.follow import Peers
from libs.loader.errors import (
    CheckpointNotFound,
    ChecksumMismatch,
    IndexCorrupt,
    LoaderError,
    PartitionMissing,
    PartitionTruncated,
)
from libs.protocol import Bus, Endpoint, Message
from libs.protocol.endpoints import STORAGE_ENSURE, STORAGE_QUARANTINE
from libs.protocol.errors import BusError
from libs.protocol.messages import EnsureReply, EnsureRequest, QuarantineRequest

log = logging.getLogger(__name__)

T = TypeVar("T")
Req = TypeVar("Req", bound=Message)
Rep = TypeVar("Rep", bound=Message)

# What a load raises when the copy itself is bad (the storage service verified it once, so
# something changed it since): a chunk's hash, a file missing or of the wrong size, the index.
COPY_DAMAGE: tuple[type[LoaderError], ...] = (
    ChecksumMismatch,
    PartitionMissing,
    PartitionTruncated,
    IndexCorrupt,
    CheckpointNotFound,
)


class NodeStorage:
    """One worker's requests to its node's storage service, following its life (``peers``:
    the storage services; without them, as in unit tests, requests wait their timeout)."""

    def __init__(
        self,
        bus: Bus,
        *,
        node_id: str,
        worker_id: str,
        timeout: float,
        peers: Peers | None = None,
    ) -> None:
        self.bus = bus
        self.node_id = node_id
        self.worker_id = worker_id
        self.timeout = timeout
        self.peers = peers

    async def _request(self, endpoint: Endpoint[Req, Rep], msg: Req) -> Rep:
        if self.peers is None:
            return await self.bus.request(endpoint, msg, timeout=self.timeout, node_id=self.node_id)
        return await self.peers.request(endpoint, msg, timeout=self.timeout, node_id=self.node_id)

    async def ensure(
        self, model: str, checkpoint_uri: str, tier: Literal["ssd", "dram"] = "ssd"
    ) -> EnsureReply:
        """The fastest copy on this node (asking for SSD returns the DRAM copy if there is one:
        loading straight from SSD beats copying into DRAM first), or, before any copy exists,
        the registry's Hugging Face directory itself (`EnsureReply.hf_source`). ``tier="dram"``
        (a LoRA adapter: megabytes, loaded many times) makes and returns the DRAM copy."""
        req = EnsureRequest(
            model=model, checkpoint_uri=checkpoint_uri, tier=tier, source_ok=tier == "ssd"
        )
        return await self._request(STORAGE_ENSURE, req)

    async def promote(self, model: str, checkpoint_uri: str) -> None:
        """Have the node keep a DRAM copy, so that the next cold start of ``model`` here is a
        DRAM hit (after a load from SSD). Off the critical path: a failure only costs speed.
        The request follows the storage service's life: one killed or restarted mid-copy is
        asked again once restarted (or given up on if it stays away), instead of this waiting
        out the load timeout on a dead process."""
        req = EnsureRequest(model=model, checkpoint_uri=checkpoint_uri, tier="dram")
        try:
            await self._request(STORAGE_ENSURE, req)
        except BusError as exc:
            log.info("could not promote %s to the DRAM tier: %s", model, exc)

    async def report_damage(self, copy: EnsureReply, exc: LoaderError) -> bool:
        """Tell the storage service that ``copy`` is damaged; whether it was quarantined.
        A failed report is logged: the retry's ensure may still find a good copy."""
        inside = exc.path is not None and os.path.dirname(exc.path) == copy.path
        req = QuarantineRequest(
            model=copy.model,
            tier=copy.tier,
            path=copy.path,
            file=os.path.basename(exc.path) if inside and exc.path else "",
            offset=exc.offset if isinstance(exc, ChecksumMismatch) else None,
            reason=f"{type(exc).__name__}: {exc.message}"[:1024],
            reporter=self.worker_id,
        )
        try:
            reply = await self._request(STORAGE_QUARANTINE, req)
        except BusError as exc_bus:
            log.warning("could not report the damaged copy of %s: %s", copy.model, exc_bus)
            return False
        log.warning(
            "%s copy of %s is damaged (%s): %s",
            copy.tier,
            copy.model,
            req.reason,
            "quarantined" if reply.quarantined else f"not quarantined ({reply.detail})",
        )
        return reply.quarantined


async def load_with_fallback(
    storage: NodeStorage,
    model: str,
    checkpoint_uri: str,
    load: Callable[[EnsureReply], Awaitable[T]],
    ensured: Callable[[EnsureReply, float], Awaitable[None]],
    tier: Literal["ssd", "dram"] = "ssd",
) -> tuple[EnsureReply, T]:
    """Ensure a copy (see `NodeStorage.ensure`) and ``load`` it; if the load finds the copy
    damaged (`COPY_DAMAGE`), report it and do both once more. ``ensured(reply, seconds)``
    follows every ensure."""
    for attempt in range(2):
        t0 = time.perf_counter()
        copy = await storage.ensure(model, checkpoint_uri, tier)
        await ensured(copy, time.perf_counter() - t0)
        try:
            return copy, await load(copy)
        except COPY_DAMAGE as exc:
            if attempt:
                raise
            await storage.report_damage(copy, exc)
    raise AssertionError("unreachable")  # the loop returns or raises
