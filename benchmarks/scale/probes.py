"""What the scale benchmark reads from outside the services: NATS's /varz counters, Valkey's
command counts, each process's CPU seconds, and a bus monitor that counts events and times
placements (a ``sched.place`` request to its reply, seen on the same NATS server)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import nats
import psutil
import redis
from nats.aio.client import Client as NATSClient
from nats.aio.msg import Msg

from benchmarks.serving.common import cpu_busy


@dataclass(frozen=True)
class Counters:
    """One reading of every counter the benchmark takes differences of."""

    at: float
    nats_in: int
    nats_out: int
    redis_commands: int
    redis_by_command: dict[str, int]
    cpu_s: dict[str, float]  # process name -> user + system CPU seconds
    machine_busy_s: float = 0.0  # CPU seconds the whole machine was busy (every process)

    def minus(self, before: Counters) -> Counters:
        return Counters(
            at=self.at - before.at,
            nats_in=self.nats_in - before.nats_in,
            nats_out=self.nats_out - before.nats_out,
            redis_commands=self.redis_commands - before.redis_commands,
            redis_by_command={
                k: v - before.redis_by_command.get(k, 0) for k, v in self.redis_by_command.items()
            },
            cpu_s={k: v - before.cpu_s.get(k, 0.0) for k, v in self.cpu_s.items()},
            machine_busy_s=self.machine_busy_s - before.machine_busy_s,
        )


class Readings:
    """Reads `Counters` from NATS's monitoring endpoint, Valkey and /proc."""

    def __init__(self, varz_url: str, redis_url: str, pids: dict[str, int]) -> None:
        self.varz_url = varz_url
        self.redis = redis.Redis.from_url(redis_url)
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}

    def read(self) -> Counters:
        varz = httpx.get(self.varz_url, timeout=5).json()
        stats = self.redis.info("stats")
        by_command = {
            k.removeprefix("cmdstat_"): int(v["calls"])
            for k, v in self.redis.info("commandstats").items()
        }
        cpu = {}
        for name, proc in self.procs.items():
            try:
                t = proc.cpu_times()
                cpu[name] = t.user + t.system
            except psutil.NoSuchProcess:
                cpu[name] = 0.0
        return Counters(
            at=time.monotonic(),
            nats_in=int(varz["in_msgs"]),
            nats_out=int(varz["out_msgs"]),
            redis_commands=int(stats["total_commands_processed"]),
            redis_by_command=by_command,
            cpu_s=cpu,
            machine_busy_s=cpu_busy()[0],
        )

    def close(self) -> None:
        self.redis.close()


@dataclass
class BusMonitor:
    """Counts events by kind and times placements; ``received`` is what it took from NATS
    (to subtract from the server's out_msgs)."""

    root: str
    events: Counter[str] = field(default_factory=Counter)
    placements: list[float] = field(default_factory=list)  # seconds, request -> reply
    loads: list[float] = field(default_factory=list)  # the scheduler's load orders, likewise
    received: int = 0
    _pending: dict[str, tuple[list[float], float]] = field(default_factory=dict)
    _nc: NATSClient | None = None

    async def start(self, url: str) -> None:
        self._nc = await nats.connect(url, name="bench-scale-monitor")
        prefix = f"{self.root}.events."

        async def on_event(msg: Msg) -> None:
            self.received += 1
            self.events[msg.subject.removeprefix(prefix)] += 1

        async def on_place(msg: Msg) -> None:
            self.received += 1
            if msg.reply:
                self._pending[msg.reply] = (self.placements, time.perf_counter())

        async def on_load(msg: Msg) -> None:
            self.received += 1
            if msg.reply:
                self._pending[msg.reply] = (self.loads, time.perf_counter())

        async def on_reply(msg: Msg) -> None:
            self.received += 1
            pending = self._pending.pop(msg.subject, None)
            if pending is not None:
                pending[0].append(time.perf_counter() - pending[1])

        await self._nc.subscribe(prefix + ">", cb=on_event)
        await self._nc.subscribe(f"{self.root}.sched.place", cb=on_place)
        await self._nc.subscribe(f"{self.root}.worker.*.load", cb=on_load)
        # Request replies go to ``_INBOX.<id>.<token>``; streamed frames have more tokens.
        await self._nc.subscribe("_INBOX.*.*", cb=on_reply)
        await self._nc.flush()

    def take(self) -> tuple[Counter[str], list[float], list[float], int]:
        """Events, placement and load-order latencies, and messages received since the last
        call."""
        out = (self.events, self.placements, self.loads, self.received)
        self.events, self.placements, self.loads, self.received = Counter(), [], [], 0
        if len(self._pending) > 10_000:  # replies never seen (timeouts): forget them
            self._pending.clear()
        return out

    async def close(self) -> None:
        if self._nc is not None:
            await self._nc.close()
