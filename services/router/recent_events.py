"""What the router learns from the monitoring events, for ``GET /v1/cluster``: a bounded ring of
recent events in words (`RecentEvents`), the phase each loading instance has reached
(`LoadPhases`) and the requests and tokens completed lately (`Throughput`).

Monitoring only: an event lost (they are best effort) leaves the status page a little behind,
never a request misrouted. `follow` subscribes the three to the bus.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterable

from libs.protocol import Bus
from libs.protocol.events import (
    EVENT_TYPES,
    DeploymentEvent,
    Event,
    EvictedEvent,
    FetchDoneEvent,
    InstanceFailedEvent,
    InstanceReadyEvent,
    InstanceStartingEvent,
    InstanceStoppedEvent,
    LoadPhaseEvent,
    MigrationAbortedEvent,
    MigrationCommittedEvent,
    MigrationStartedEvent,
    RecordRepairedEvent,
    RequestCompletedEvent,
    RequestFailoverEvent,
    ScaledEvent,
    StateRepublishedEvent,
    event_kind,
)

from .cluster_schema import EventOut

RING_SIZE = 200
# Tokens per second are averaged over this window of completed requests.
WINDOW_S = 30.0
# Bounds on what is remembered per key, so a flood of events cannot grow the router.
MAX_LOADING = 4096
MAX_SAMPLES = 10_000
MAX_KEYS = 4096


def _size(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.1f} MiB"


RING_TYPES: tuple[type[Event], ...] = (
    InstanceStartingEvent,
    InstanceReadyEvent,
    InstanceStoppedEvent,
    InstanceFailedEvent,
    ScaledEvent,
    DeploymentEvent,
    MigrationStartedEvent,
    MigrationCommittedEvent,
    MigrationAbortedEvent,
    RequestFailoverEvent,
    EvictedEvent,
    FetchDoneEvent,
    RecordRepairedEvent,
    StateRepublishedEvent,
)
"""The events the ring keeps; `summarize` says each in words."""


def summarize(e: Event) -> str | None:
    """The event in words for the ring; None for a kind the ring does not keep."""
    match e:
        case InstanceStartingEvent():
            return f"{e.model}: instance {e.instance_id} loading on {e.worker_id}"
        case InstanceReadyEvent():
            return (
                f"{e.model}: instance {e.instance_id} ready on {e.worker_id} "
                f"(from {e.source_tier} in {e.load_s:.2f} s)"
            )
        case InstanceStoppedEvent():
            why = f": {e.reason}" if e.reason else ""
            return f"{e.model}: instance {e.instance_id} stopped on {e.worker_id}{why}"
        case InstanceFailedEvent():
            return f"{e.model}: instance {e.instance_id} failed on {e.worker_id}: {e.error[:200]}"
        case ScaledEvent():
            return (
                f"{e.model}: scaled {e.from_instances} -> {e.to_instances} instances ({e.reason})"
            )
        case DeploymentEvent():
            return f"deployment {e.name} {e.action}"
        case MigrationStartedEvent():
            return (
                f"migrating request {e.request_id} ({e.tokens} tokens) from {e.worker_id} "
                f"to {e.destination_worker_id}"
            )
        case MigrationCommittedEvent():
            pause = f", paused {e.pause_s * 1000:.0f} ms" if e.pause_s is not None else ""
            return f"request {e.request_id} migrated {e.source_worker_id} -> {e.worker_id}{pause}"
        case MigrationAbortedEvent():
            return f"migration of request {e.request_id} aborted by the {e.side}: {e.reason}"
        case RequestFailoverEvent():
            return (
                f"{e.model}: request {e.request_id} failed over {e.from_worker_id} -> "
                f"{e.to_worker_id} after {e.tokens} tokens ({e.reason})"
            )
        case EvictedEvent():
            why = f" ({e.reason})" if e.reason else ""
            return f"{e.node_id}: evicted {e.model} from {e.tier}, {_size(e.bytes)}{why}"
        case FetchDoneEvent():
            return (
                f"{e.node_id}: {e.model} copied {e.source_tier} -> {e.tier}, "
                f"{_size(e.bytes)} in {e.seconds:.2f} s"
            )
        case RecordRepairedEvent():
            return f"repaired the records of {e.worker_id} / {e.instance_id}: {e.problem}"
        case StateRepublishedEvent():
            return f"{e.service} republished its state ({e.reason})"
    return None


class RecentEvents:
    """The last ``size`` events the ring keeps, in words."""

    def __init__(self, size: int = RING_SIZE) -> None:
        self._ring: deque[EventOut] = deque(maxlen=size)

    def add(self, event: Event) -> None:
        text = summarize(event)
        if text is not None:
            self._ring.append(EventOut(time=event.ts, kind=event.kind, summary=text))

    def newest_first(self, limit: int | None = None) -> list[EventOut]:
        out = list(reversed(self._ring))
        return out if limit is None else out[:limit]


class LoadPhases:
    """The last load phase each loading instance finished (``ensure``, ``read``, ``build``...);
    forgotten once it is ready, stopped or failed."""

    def __init__(self, size: int = MAX_LOADING) -> None:
        self.size = size
        self._phase: OrderedDict[str, str] = OrderedDict()

    def add(self, event: Event) -> None:
        if isinstance(event, LoadPhaseEvent):
            self._phase[event.instance_id] = event.phase
            self._phase.move_to_end(event.instance_id)
            while len(self._phase) > self.size:
                self._phase.popitem(last=False)
        elif isinstance(event, InstanceReadyEvent | InstanceStoppedEvent | InstanceFailedEvent):
            self._phase.pop(event.instance_id, None)

    def phase(self, instance_id: str) -> str:
        return self._phase.get(instance_id, "")


class Throughput:
    """Requests and tokens completed lately, per instance and per model, from every router's
    ``request.completed`` events: tokens per second over the last ``window_s``, requests
    since this router started. A request counts when it ends (a long stream, all at once)."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self.requests: dict[str, int] = {}
        self._tokens: dict[str, deque[tuple[float, int]]] = {}  # key -> (end time, tokens)

    def add(self, event: Event) -> None:
        if not isinstance(event, RequestCompletedEvent):
            return
        if event.model in self.requests or len(self.requests) < MAX_KEYS:
            self.requests[event.model] = self.requests.get(event.model, 0) + 1
        for key in (f"model:{event.model}", f"instance:{event.instance_id}"):
            if key == "instance:":
                continue
            samples = self._tokens.get(key)
            if samples is None:
                if len(self._tokens) >= MAX_KEYS:
                    self._prune(event.ts)
                    if len(self._tokens) >= MAX_KEYS:
                        continue
                samples = self._tokens[key] = deque(maxlen=MAX_SAMPLES)
            samples.append((event.ts, event.completion_tokens))

    def model_tokens_per_s(self, model: str, now: float) -> float:
        return self._rate(f"model:{model}", now)

    def instance_tokens_per_s(self, instance_id: str, now: float) -> float:
        return self._rate(f"instance:{instance_id}", now)

    def _rate(self, key: str, now: float) -> float:
        samples = self._tokens.get(key)
        if not samples:
            return 0.0
        since = now - self.window_s
        return sum(n for t, n in samples if t >= since) / self.window_s

    def _prune(self, now: float) -> None:
        since = now - self.window_s
        for key in list(self._tokens):
            samples = self._tokens[key]
            while samples and samples[0][0] < since:
                samples.popleft()
            if not samples:
                del self._tokens[key]


class EventFollower:
    """The ring, the load phases and the throughput, fed from one set of subscriptions; load
    phases also go to ``on_phase`` (the cold queue's progress)."""

    def __init__(self) -> None:
        self.recent = RecentEvents()
        self.phases = LoadPhases()
        self.throughput = Throughput()
        self.on_phase: Callable[[LoadPhaseEvent], None] | None = None

    def add(self, event: Event) -> None:
        self.recent.add(event)
        self.phases.add(event)
        self.throughput.add(event)
        if self.on_phase is not None and isinstance(event, LoadPhaseEvent):
            self.on_phase(event)

    def kinds(self) -> Iterable[str]:
        ring = (event_kind(cls) for cls in RING_TYPES)
        return sorted({*ring, "load.phase", "request.completed"})

    async def follow(self, bus: Bus) -> None:
        """Subscribe to every kind it reads (core NATS: no replay, nothing retained)."""

        async def on_event(event: Event) -> None:
            self.add(event)

        for kind in self.kinds():
            await bus.subscribe(bus.subjects.event(kind), EVENT_TYPES[kind], on_event, json=True)
