"""The LoRA adapters resident on a worker's base model: fetched, installed, evicted.

An adapter is fetched like a model, through the node's storage service (registry → SSD → DRAM:
it is converted to the sllm format once, then kept in the DRAM tier, where it is megabytes),
loaded with the same loader (on a CPU a DRAM copy is mapped, not read), checked against the
base's modules and installed: milliseconds on a warm base, not a model load. At most
``capacity`` adapters stay resident, least recently used first out. Evicting one only drops
the bank's reference: requests already running keep theirs until they finish, so an eviction
never fails a request, and a request never waits for a free slot.

Loads are single-flight: concurrent first requests for an adapter share one fetch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from libs.protocol.errors import BadRequestError, BusError, InternalError
from libs.protocol.messages import EnsureReply

from .fetch import NodeStorage, load_with_fallback

if TYPE_CHECKING:
    from .lora import LoadedAdapter
    from .metrics import WorkerMetrics
    from .runtime import Runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdapterLoad:
    """How one adapter came to be resident (for the logs, metrics and the benchmark)."""

    name: str
    source_tier: str  # where the storage service found its bytes
    ensure_s: float
    install_s: float
    nbytes: int


class AdapterBank:
    """Adapters of one loaded base model, by deployment name (see the module docstring).

    Args:
        model: the base model (the engine's), adapters are installed on it.
        storage: makes an adapter's copy available on this node.
        capacity: adapters kept resident at most.
        on_change: told the resident names (least recently used first) when they change.
    """

    def __init__(
        self,
        model: Any,
        storage: Callable[[], NodeStorage],
        *,
        capacity: int,
        on_change: Callable[[list[str]], None] | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("an adapter bank holds at least one adapter")
        self.model = model
        self.capacity = capacity
        self._storage = storage
        self._on_change = on_change
        self._metrics = metrics
        self._resident: OrderedDict[str, tuple[str, LoadedAdapter]] = OrderedDict()
        self._loading: dict[tuple[str, str], asyncio.Future[LoadedAdapter]] = {}
        self.loads: list[AdapterLoad] = []  # the latest few, newest last
        self.evictions = 0

    @property
    def resident(self) -> list[str]:
        """Resident adapters, least recently used first."""
        return list(self._resident)

    async def get(self, name: str, uri: str) -> LoadedAdapter:
        """The adapter ``name`` (checkpoint ``uri``), loading it if it is not resident.

        Raises:
            BadRequestError: the adapter does not fit this base (module, shape, rank).
            BusError: the storage service could not provide it.
        """
        held = self._resident.get(name)
        if held is not None and held[0] == uri:
            self._resident.move_to_end(name)
            return held[1]
        key = (name, uri)
        fut = self._loading.get(key)
        if fut is None:
            fut = asyncio.ensure_future(self._load(name, uri))
            self._loading[key] = fut
            fut.add_done_callback(partial(self._loaded, key))
        # Shielded: one waiter's cancellation does not cancel the load the others share.
        return await asyncio.shield(fut)

    def _loaded(self, key: tuple[str, str], fut: asyncio.Future[LoadedAdapter]) -> None:
        self._loading.pop(key, None)
        if not fut.cancelled() and fut.exception() is not None:
            # Its waiters got the error; one whose callers all left is logged, not lost.
            log.info("adapter %s could not be loaded: %s", key[0], fut.exception())

    async def _load(self, name: str, uri: str) -> LoadedAdapter:
        t0 = time.perf_counter()
        ensure_s = 0.0

        async def ensured(reply: EnsureReply, seconds: float) -> None:
            nonlocal ensure_s
            ensure_s = seconds

        async def install(reply: EnsureReply) -> LoadedAdapter:
            return await asyncio.to_thread(partial(build_adapter, name, reply.path, self.model))

        reply, adapter = await load_with_fallback(
            self._storage(), name, uri, install, ensured, tier="dram"
        )
        took = time.perf_counter() - t0
        if self._metrics is not None:
            self._metrics.adapter_load_seconds.labels(tier=reply.source_tier).observe(took)
        self.loads = [
            *self.loads[-31:],
            AdapterLoad(name, reply.source_tier, ensure_s, took - ensure_s, adapter.nbytes()),
        ]
        log.info(
            "adapter %s resident in %.1f ms (%s copy from %s, %d bytes)",
            name,
            took * 1e3,
            reply.tier,
            reply.source_tier,
            adapter.nbytes(),
        )
        self._resident[name] = (uri, adapter)
        self._resident.move_to_end(name)
        while len(self._resident) > self.capacity:
            evicted, _ = self._resident.popitem(last=False)
            self.evictions += 1
            if self._metrics is not None:
                self._metrics.adapter_evictions.inc()
            log.info("adapter %s evicted (least recently used of %d)", evicted, self.capacity)
        self._changed()
        return adapter

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.resident)


def build_adapter(name: str, path: str, model: Any) -> LoadedAdapter:
    """Load the adapter checkpoint at ``path`` and make it ready for ``model`` (blocking)."""
    from libs.loader import load_checkpoint
    from libs.loader.adapter import AdapterConfigError, read_adapter_config

    from .lora import LoadedAdapter

    try:
        config = read_adapter_config(path)
    except AdapterConfigError as exc:
        raise BadRequestError(f"adapter {name}: {exc}", detail={"param": "model"}) from None
    try:
        tensors = load_checkpoint(path, "cpu")
        adapter = LoadedAdapter.build(name, config, tensors, model)
    except BusError:
        raise
    except Exception as exc:
        # The loader's damage errors go back to `load_with_fallback` (COPY_DAMAGE) unchanged.
        from .fetch import COPY_DAMAGE

        if isinstance(exc, COPY_DAMAGE):
            raise
        raise InternalError(f"adapter {name}: cannot load: {exc!r}") from None
    # Its modules are hooked by the engine thread at the first step that feeds it
    # (`BatchForward`): hooking them here, from another thread, could change a module's hooks
    # while a forward pass iterates over them.
    return adapter


class WorkerAdapters:
    """Gives a request the adapter it names, from the bank of the runtime serving it (a bank
    is made at the first adapter request a loaded base gets, and goes with the runtime).

    Args:
        storage: the worker's requests to its node's storage service.
        capacity: adapters each bank keeps resident.
        record: told (instance id, resident adapters) when a bank changes: the worker writes
            them into the instance's record, where routers look for an instance that holds a
            request's adapter.
    """

    def __init__(
        self,
        *,
        storage: Callable[[], NodeStorage],
        capacity: int,
        record: Callable[[str, list[str]], None],
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self._storage = storage
        self.capacity = capacity
        self._record = record
        self._metrics = metrics

    async def get(self, instance_id: str, runtime: Runtime, name: str, uri: str) -> LoadedAdapter:
        bank: AdapterBank | None = runtime.adapters
        if bank is None:
            bank = AdapterBank(
                runtime.model,
                self._storage,
                capacity=self.capacity,
                on_change=partial(self._record, instance_id),
                metrics=self._metrics,
            )
            runtime.adapters = bank
        return await bank.get(name, uri)
