"""One step of the scale benchmark summarised (pure), and the Markdown table of all steps."""

from __future__ import annotations

from collections import Counter
from typing import Any

from benchmarks.serving.common import percentile

from .load import Outcome
from .probes import Counters

OVERHEAD_LIMIT_S = 0.050


def summarise(
    *,
    workers: int,
    rate: float,
    outcomes: list[Outcome],
    delta: Counters,
    events: Counter[str],
    placements: list[float],
    loads: list[float],
    monitor_received: int,
) -> dict[str, Any]:
    ok = [o for o in outcomes if o.ttft_s is not None]
    n = max(len(outcomes), 1)
    overheads = [x for o in ok if (x := o.overhead_s) is not None]
    # Hot: the instance was ready before the request was sent (no load to wait for).
    warm = [x for o in ok if (x := o.overhead_s) is not None and o.hot]
    cold = [x for o in ok if (x := o.overhead_s) is not None and not o.hot]
    cpu = delta.cpu_s
    hollow_cpu = sum(v for k, v in cpu.items() if k.startswith("hollow"))
    placed = max(events.get("scheduler.placed", 0), 1)
    errors = Counter(o.error.split(":")[0][:40] for o in outcomes if o.error)
    top_redis = sorted(delta.redis_by_command.items(), key=lambda kv: -kv[1])[:4]
    ms = 1000.0
    return {
        "workers": workers,
        "rate": rate,
        "seconds": round(delta.at, 1),
        "requests": len(outcomes),
        "ok": len(ok),
        "errors": dict(errors),
        "client_lag_p99_ms": percentile([o.lag_s for o in outcomes], 99) * ms,
        "ttft_p50_ms": percentile([o.ttft_s for o in ok if o.ttft_s is not None], 50) * ms,
        "ttft_p99_ms": percentile([o.ttft_s for o in ok if o.ttft_s is not None], 99) * ms,
        "overhead_p50_ms": percentile(overheads, 50) * ms,
        "overhead_p99_ms": percentile(overheads, 99) * ms,
        "warm_overhead_p50_ms": percentile(warm, 50) * ms,
        "warm_overhead_p99_ms": percentile(warm, 99) * ms,
        "warm_requests": len(warm),
        "cold_overhead_p50_ms": percentile(cold, 50) * ms,
        "cold_overhead_p99_ms": percentile(cold, 99) * ms,
        "placements": events.get("scheduler.placed", 0),
        "place_p50_ms": percentile(placements, 50) * ms,
        "place_p99_ms": percentile(placements, 99) * ms,
        "place_requests": len(placements),
        # The scheduler's load order to the (hollow) worker, inside the placement.
        "load_order_p50_ms": percentile(loads, 50) * ms,
        "load_order_p99_ms": percentile(loads, 99) * ms,
        "sched_cpu_ms_per_placement": cpu.get("scheduler", 0.0) / placed * ms,
        "sched_cpu_pct": cpu.get("scheduler", 0.0) / delta.at * 100,
        "router_cpu_ms_per_request": cpu.get("router", 0.0) / n * ms,
        "router_cpu_pct": cpu.get("router", 0.0) / delta.at * 100,
        "hollow_cpu_pct": hollow_cpu / delta.at * 100,
        "nats_cpu_pct": cpu.get("nats", 0.0) / delta.at * 100,
        "valkey_cpu_pct": cpu.get("valkey", 0.0) / delta.at * 100,
        "client_cpu_pct": cpu.get("client", 0.0) / delta.at * 100,
        "machine_cpu_pct": delta.machine_busy_s / delta.at * 100,
        "others_cpu_pct": (delta.machine_busy_s - sum(cpu.values())) / delta.at * 100,
        "redis_cmds_per_request": delta.redis_commands / n,
        "redis_top_per_request": {k: round(v / n, 1) for k, v in top_redis},
        "nats_in_per_request": delta.nats_in / n,
        "nats_out_per_request": (delta.nats_out - monitor_received) / n,
        "events_per_s": sum(events.values()) / delta.at,
        "events_top": dict(events.most_common(6)),
    }


COLUMNS = (
    ("workers", "workers", "{:.0f}"),
    ("rate", "req/s", "{:.0f}"),
    ("ok", "ok", "{:.0f}"),
    ("requests", "sent", "{:.0f}"),
    ("ttft_p50_ms", "TTFT p50", "{:.0f}"),
    ("overhead_p50_ms", "ovh p50", "{:.0f}"),
    ("overhead_p99_ms", "ovh p99", "{:.0f}"),
    ("warm_overhead_p50_ms", "hot ovh p50", "{:.0f}"),
    ("warm_overhead_p99_ms", "hot ovh p99", "{:.0f}"),
    ("cold_overhead_p50_ms", "cold ovh p50", "{:.0f}"),
    ("placements", "placed", "{:.0f}"),
    ("place_p50_ms", "place p50", "{:.1f}"),
    ("place_p99_ms", "place p99", "{:.1f}"),
    ("load_order_p50_ms", "load order p50", "{:.1f}"),
    ("sched_cpu_ms_per_placement", "sched ms/place", "{:.1f}"),
    ("sched_cpu_pct", "sched %", "{:.0f}"),
    ("router_cpu_ms_per_request", "router ms/req", "{:.1f}"),
    ("router_cpu_pct", "router %", "{:.0f}"),
    ("hollow_cpu_pct", "hollow %", "{:.0f}"),
    ("valkey_cpu_pct", "valkey %", "{:.0f}"),
    ("nats_cpu_pct", "nats %", "{:.0f}"),
    ("client_cpu_pct", "client %", "{:.0f}"),
    ("others_cpu_pct", "others %", "{:.0f}"),
    ("redis_cmds_per_request", "redis/req", "{:.1f}"),
    ("nats_in_per_request", "nats in/req", "{:.1f}"),
    ("events_per_s", "events/s", "{:.0f}"),
)


def table(steps: list[dict[str, Any]]) -> str:
    """The steps as one Markdown table (latencies in ms)."""
    head = "| " + " | ".join(h for _, h, _ in COLUMNS) + " |"
    rule = "|" + "|".join("---:" for _ in COLUMNS) + "|"
    rows = [
        "| " + " | ".join(fmt.format(s.get(k, float("nan"))) for k, _, fmt in COLUMNS) + " |"
        for s in steps
    ]
    return "\n".join([head, rule, *rows])


def knee(steps: list[dict[str, Any]], limit_s: float = OVERHEAD_LIMIT_S) -> float | None:
    """The lowest request rate whose p99 TTFT overhead passes ``limit_s`` (None: none did)."""
    over = [s["rate"] for s in steps if s["overhead_p99_ms"] > limit_s * 1000]
    return min(over) if over else None
