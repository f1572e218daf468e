"""The node's tiers in motion: ensure (fetch into SSD, promote into DRAM with LRU eviction),
evict, quarantine (a damaged copy reported by a reader), and the one refetch a failed
verification earns. File work runs in `BlockingPool`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal

from libs.loader.seal import write_seal
from libs.protocol.errors import ConflictError, CorruptError, StorageFullError
from libs.protocol.messages import QuarantineRequest, Tier

from .checkpoint import INDEX_FILE, Marker, parse_index, read_index_bytes
from .concurrency import BlockingPool, KeyedLocks
from .lru import TierCatalog, TierEntry, refusal_reason
from .metrics import StorageMetrics
from .names import MARKER_FILE, checkpoint_dirname
from .publisher import NodePublisher
from .quarantine import confirm_damage
from .sources import FetchPlan, copy_checkpoint, fetch, prepare
from .transfer import Meter, Staging, retire, storage_full, write_bytes
from .uri import RegistrySource

log = logging.getLogger(__name__)

Served = tuple[TierEntry, Literal["dram", "ssd"], Tier]  # the copy, its tier, the source tier
# Models that live instances on this node use; None when that cannot be known right now.
InUse = Callable[[], Awaitable[set[str] | None]]


async def _nothing_in_use() -> set[str]:
    return set()


class TierManager:
    def __init__(
        self,
        ssd: TierCatalog,
        dram: TierCatalog,
        publisher: NodePublisher,
        pool: BlockingPool,
        fetch_timeout: float,
        in_use: InUse = _nothing_in_use,
        metrics: StorageMetrics | None = None,
    ) -> None:
        self.metrics = metrics or StorageMetrics()
        self.ssd = ssd
        self.dram = dram
        self.publisher = publisher
        self.pool = pool
        self.fetch_timeout = fetch_timeout
        self.in_use = in_use
        # Concurrent requests for one model queue on its lock: the first fetches, the others
        # then find the copy. Models whose lock is taken are never LRU victims.
        self.locks = KeyedLocks()
        # Per model, held while its DRAM copy is being made (see `ensure`).
        self.promotions = KeyedLocks()
        self._retiring: dict[Path, asyncio.Task[None]] = {}

    # --- entry points ----------------------------------------------------------------------

    async def ensure(
        self, model: str, source: RegistrySource, tier: Literal["dram", "ssd"]
    ) -> Served:
        """The fastest copy of ``model`` at least as fast as ``tier``, fetching and promoting
        as needed.

        The SSD step and the DRAM promotion hold different locks: a reader that only needs
        the SSD copy (a worker about to load) does not wait behind a promotion in progress
        (a prefetch, or a promotion after another load). Lock order: the model's lock, then
        its promotion lock, never the other way round.
        """
        refetched = [False]  # the one refetch a failed verification earns, per request
        while True:
            async with self.locks.hold(model):
                served = await self._ssd_or_better(model, source, refetched)
            if tier == "ssd" or served[1] == "dram":
                return served
            ssd_entry, _, source_tier = served
            async with self.promotions.hold(model):
                hit = await self._usable(self.dram, model, source.uri)
                if hit is not None:  # another promotion finished while we waited
                    return hit, "dram", source_tier
                try:
                    promoted = await self._promote(model, ssd_entry)
                except CorruptError as exc:
                    # The SSD copy rotted (or was tampered with) since it was verified.
                    if refetched[0]:
                        raise CorruptError(
                            f"{model}: SSD copy failed verification: {exc.message}"
                        ) from None
                    refetched[0] = True
                    damage = exc.message
                else:
                    if promoted is None:
                        return ssd_entry, "ssd", source_tier
                    return promoted, "dram", source_tier
            async with self.locks.hold(model):  # the corrupt copy goes; the loop fetches again
                await self._quarantine(model, self.ssd, reason=damage)

    async def quarantine(self, req: QuarantineRequest) -> tuple[bool, str]:
        """A reader found the copy at ``req.path`` damaged: check the claim (the chunk it
        names, else the whole copy) and, if it holds, remove the copy so that the next ensure
        serves another tier or fetches again. Returns (removed, what was found)."""
        catalog = self.dram if req.tier == "dram" else self.ssd
        async with self.locks.hold(req.model):
            entry = catalog.get(req.model)
            if entry is None or str(entry.path) != req.path:
                return False, f"not the {catalog.name} tier's current copy of {req.model}"
            path = entry.path
            damage = await self.pool.run(
                lambda cancel: confirm_damage(
                    path, req.file, req.offset, Meter(total=0, cancel=cancel)
                )
            )
            if damage is None:
                log.warning(
                    "%s: %s reported the %s copy damaged (%s), but it checks intact",
                    req.model,
                    req.reporter or "a reader",
                    catalog.name,
                    req.reason,
                )
                return False, "the copy checks intact"
            await self._quarantine(
                req.model,
                catalog,
                file=req.file,
                offset=req.offset,
                reason=damage,
                reporter=req.reporter,
            )
            return True, damage

    async def evict(self, model: str, tier: Literal["dram", "ssd"]) -> bool:
        """Remove from ``tier``; removing the SSD copy removes the DRAM copy too. A copy a
        live instance on this node uses stays (`ConflictError`)."""
        async with self.locks.hold(model), self.promotions.hold(model):
            in_use = await self.in_use()
            if in_use is None or model in in_use:
                raise ConflictError(
                    f"{model} is in use on this node (or that cannot be checked now); "
                    "stop its instances first"
                )
            evicted = await self._evict(model, self.dram, "requested")
            if tier == "ssd":
                evicted = await self._evict(model, self.ssd, "requested") or evicted
            return evicted

    # --- ensure ----------------------------------------------------------------------------

    async def _ssd_or_better(
        self, model: str, source: RegistrySource, refetched: list[bool]
    ) -> Served:
        """The DRAM copy if there is one, else the SSD copy, fetched if needed (model lock held)."""
        # "At least as fast as ``tier``": a DRAM copy also satisfies an SSD request, and the
        # reader gets the fastest copy there is.
        hit = await self._usable(self.dram, model, source.uri)
        if hit is not None:
            self.dram.touch(model)
            self.ssd.touch(model)
            return hit, "dram", "dram"
        ssd_entry = await self._usable(self.ssd, model, source.uri)
        if ssd_entry is None:
            return await self._fetch(model, source, refetched), "ssd", "registry"
        self.ssd.touch(model)
        return ssd_entry, "ssd", "ssd"

    async def _usable(self, catalog: TierCatalog, model: str, uri: str) -> TierEntry | None:
        """The tier's copy of ``model`` if it came from ``uri`` and is still on disk. A copy of
        another checkpoint (the deployment changed its URI) or one that vanished is evicted."""
        entry = catalog.get(model)
        if entry is None:
            return None
        if entry.uri != uri:
            if catalog is self.ssd:
                await self._evict(model, self.dram, "replaced")
            await self._evict(model, catalog, "replaced")
            return None
        # One stat, outside the I/O pool so that a hit never queues behind long copies.
        if not await asyncio.to_thread((entry.path / INDEX_FILE).is_file):
            log.warning("%s: %s copy vanished from %s", model, catalog.name, entry.path)
            await self._evict(model, catalog, "missing")
            return None
        return entry

    async def _fetch(self, model: str, source: RegistrySource, refetched: list[bool]) -> TierEntry:
        """Registry -> SSD, once more if the copy fails verification."""
        while True:
            try:
                return await self._fetch_once(model, source)
            except CorruptError as exc:
                if refetched[0]:
                    raise CorruptError(
                        f"{model}: checkpoint from {source.uri} failed verification twice: "
                        f"{exc.message}"
                    ) from None
                log.warning("%s: fetched copy failed verification, fetching again: %s", model, exc)
                refetched[0] = True

    async def _fetch_once(self, model: str, source: RegistrySource) -> TierEntry:
        plan = await self.pool.run(lambda _: prepare(source, self.fetch_timeout))
        need = plan.need_bytes
        pinned = await self._pinned(self.ssd)
        victims = self.ssd.plan(need, pinned=pinned)
        if victims is None:
            reason = refusal_reason(self.ssd.capacity, need)
            await self.publisher.skipped(model, self.ssd, need, reason, pinned)
            raise StorageFullError(
                f"ssd tier cannot hold {model} ({need} bytes; capacity {self.ssd.capacity}; "
                f"{'larger than the tier' if reason == 'too_large' else 'the rest is in use'})"
            )
        # Taking the victims and reserving the room happen without an await in between, so
        # that concurrent fetches of other models cannot plan with the same free bytes.
        taken = [(e, c) for v in victims for c in (self.dram, self.ssd) if (e := self._take(v, c))]
        self.ssd.reserve(need)
        dst = self.ssd.root / checkpoint_dirname(model)
        try:
            for e, c in taken:
                await self._finish_eviction(e, c, "lru")
            await self._retired(dst)
            progress = self.publisher.progress(model, "ssd", need)
            marker = Marker(model, source.uri)
            t0 = time.monotonic()
            nbytes = await self.pool.run(
                lambda cancel: self._fetch_blocking(
                    plan, dst, marker, Meter(need, progress, cancel)
                )
            )
            seconds = time.monotonic() - t0
        finally:
            self.ssd.release(need)
        entry = self.ssd.add(TierEntry(model, dst, nbytes, source.uri))
        log.info("%s: fetched %d bytes from %s in %.2fs", model, nbytes, source.uri, seconds)
        await self.publisher.locality(self.ssd, model)
        await self.publisher.transfer_measured("registry", nbytes, seconds)
        self.metrics.copied("ssd", "registry", nbytes, seconds)
        await self.publisher.fetched(model, "ssd", "registry", nbytes, seconds)
        return entry

    def _fetch_blocking(self, plan: FetchPlan, dst: Path, marker: Marker, meter: Meter) -> int:
        free = shutil.disk_usage(self.ssd.root).free
        if free < plan.need_bytes:
            raise StorageFullError(
                f"ssd tier has {free} bytes free; {marker.model} needs {plan.need_bytes}"
            )
        try:
            with Staging(self.ssd.root) as staging:
                files = fetch(plan, staging.checkpoint, meter, self.fetch_timeout)
                write_bytes(staging.checkpoint / MARKER_FILE, marker.dump(), "ssd")
                staging.commit(dst)
        except OSError as exc:
            full = storage_full(exc, "ssd", dst)
            if full is None:
                raise
            raise full from exc
        return files.total_bytes

    async def _promote(self, model: str, ssd_entry: TierEntry) -> TierEntry | None:
        """SSD -> DRAM; None when the DRAM tier cannot make room (the caller serves SSD)."""
        need = ssd_entry.bytes
        pinned = await self._pinned(self.dram, model)
        victims = self.dram.plan(need, pinned=pinned)
        if victims is None:
            reason = refusal_reason(self.dram.capacity, need)
            await self.publisher.skipped(model, self.dram, need, reason, pinned)
            return None
        taken = [(e, self.dram) for v in victims if (e := self._take(v, self.dram))]
        self.dram.reserve(need)
        dst = self.dram.root / checkpoint_dirname(model)
        try:
            for e, c in taken:
                await self._finish_eviction(e, c, "lru")
            await self._retired(dst)
            progress = self.publisher.progress(model, "dram", need)
            marker = Marker(model, ssd_entry.uri)
            src = ssd_entry.path
            t0 = time.monotonic()
            try:
                nbytes, read_s = await self.pool.run(
                    lambda cancel: self._promote_blocking(
                        src, dst, marker, Meter(need, progress, cancel)
                    )
                )
            except StorageFullError as exc:
                # The tmpfs is smaller than the configured capacity: SSD still serves.
                log.warning("%s: DRAM tier is full (%s); serving from SSD", model, exc.message)
                return None
            seconds = time.monotonic() - t0
        finally:
            self.dram.release(need)
        entry = self.dram.add(TierEntry(model, dst, nbytes, ssd_entry.uri))
        self.ssd.touch(model)
        await self.publisher.locality(self.dram, model)
        await self.publisher.transfer_measured("ssd", nbytes, read_s)
        self.metrics.copied("dram", "ssd", nbytes, seconds)
        await self.publisher.fetched(model, "dram", "ssd", nbytes, seconds)
        return entry

    def _promote_blocking(
        self, src: Path, dst: Path, marker: Marker, meter: Meter
    ) -> tuple[int, float]:
        try:
            raw = read_index_bytes(src)
        except FileNotFoundError:
            raise CorruptError(f"{src}: the SSD copy has no index") from None
        files = parse_index(raw)
        if shutil.disk_usage(self.dram.root).free < files.total_bytes:
            raise StorageFullError(f"the DRAM tier file system has no room for {marker.model}")
        try:
            with Staging(self.dram.root) as staging:
                staging.checkpoint.mkdir()
                copy_checkpoint(src, files, raw, staging.checkpoint, meter, "dram", direct=True)
                # Every chunk was just hashed on its way in: loaders need not hash it again
                # while the files stay as they are now (libs/loader/seal.py).
                write_seal(staging.checkpoint, files.partitions)
                write_bytes(staging.checkpoint / MARKER_FILE, marker.dump(), "dram")
                staging.commit(dst)
        except OSError as exc:
            full = storage_full(exc, "dram", dst)
            if full is None:
                raise
            raise full from exc
        return files.total_bytes, meter.read_s

    # --- eviction --------------------------------------------------------------------------

    async def _pinned(self, catalog: TierCatalog, model: str = "") -> set[str]:
        """Copies in ``catalog`` that must not be evicted now: those of models live instances
        on this node use, and those whose lock is taken (being written or read), except
        ``model``'s own. If what is in use cannot be read, nothing is evicted.

        The caller plans and takes its victims without an await after this, so that the
        answer still holds when it acts on it.
        """
        in_use = await self.in_use()
        if in_use is None:
            in_use = set(catalog.entries)
        return (in_use | self.locks.busy() | self.promotions.busy()) - {model}

    def _take(self, model: str, catalog: TierCatalog) -> TierEntry | None:
        """Drop ``model`` from the catalog now and start deleting its directory."""
        entry = catalog.pop(model)
        if entry is None:
            return None
        path = entry.path
        task = asyncio.ensure_future(self.pool.run(lambda _: retire(path)))
        self._retiring[path] = task

        def forget(_: object) -> None:
            if self._retiring.get(path) is task:
                del self._retiring[path]

        task.add_done_callback(forget)
        return entry

    async def _retired(self, path: Path) -> None:
        """Wait for a deletion of ``path`` in progress (before a new copy takes the name)."""
        task = self._retiring.get(path)
        if task is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(task)

    async def _finish_eviction(self, entry: TierEntry, catalog: TierCatalog, reason: str) -> None:
        self.metrics.removed(catalog.name, reason, entry.bytes)
        try:
            await self._retired(entry.path)
        finally:
            await self.publisher.evicted(entry, catalog, reason)

    async def _quarantine(
        self,
        model: str,
        catalog: TierCatalog,
        *,
        reason: str,
        file: str = "",
        offset: int | None = None,
        reporter: str = "",
    ) -> None:
        """Remove a copy that failed verification (never served again) and say so."""
        if await self._evict(model, catalog, "corrupt"):
            await self.publisher.quarantined(
                model, catalog.name, file=file, offset=offset, reason=reason, reporter=reporter
            )

    async def _evict(self, model: str, catalog: TierCatalog, reason: str) -> bool:
        entry = self._take(model, catalog)
        if entry is None:
            return False
        await self._finish_eviction(entry, catalog, reason)
        return True
