"""`make bench-ha`: a steady streamed load through the loss of a NATS server and through a Valkey
failover, on `sllm up --ha` (3 NATS servers, Valkey primary + replica + 3 sentinels).

Phases, one after the other: ``--baseline`` seconds of load; `kill -9` of one nats-server, then
``--phase`` seconds; `kill -9` of the Valkey primary (the one the sentinels name), then
``--phase`` seconds. ``--clients`` threads stream greedy completions back to back (the client
retries nothing). Per phase: requests, failed (as the client saw them), success rate, latency
p50 / p99 (send to the stream's end) and TTFT p99, and the recovery time: from the kill to the
end of the last second in which a request failed or took more than twice the baseline's p99
(0 when none did). Targets (issue 14): no failed request; recovery under 10 s. A plot of
every request's latency against time, the kills marked, goes next to the results.

    .venv/bin/python -m benchmarks.bench_ha [--clients 8] [--baseline 20] [--phase 30]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from .serving.cluster import UpCluster
from .serving.common import log, percentile, save_results
from .serving.models import prepare_model

PROMPTS = [f"Tell me about the mountains, part {i}." for i in range(8)]
MODEL = "ha"
RECOVERY_TARGET_S = 10.0
SLOW = 2.0  # a request slower than this many times the baseline's p99 is not yet recovered


@dataclass
class Sample:
    sent: float  # time.monotonic()
    done: float
    ttft: float | None
    error: str = ""


@dataclass
class Load:
    samples: list[Sample] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, s: Sample) -> None:
        with self.lock:
            self.samples.append(s)


def stream_once(http: httpx.Client, prompt: str) -> tuple[float | None, str]:
    """One greedy streamed completion: (seconds to its first text, error or "")."""
    t0 = time.monotonic()
    ttft = None
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 24, "temperature": 0, "stream": True}
    try:
        with http.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code != 200:
                r.read()
                return ttft, f"HTTP {r.status_code}: {r.text[:120]}"
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line.removeprefix("data: "))
                if "error" in chunk:
                    return ttft, f"stream error: {chunk['error'].get('message', '')[:120]}"
                if ttft is None and any(c.get("text") for c in chunk["choices"]):
                    ttft = time.monotonic() - t0
    except httpx.HTTPError as exc:
        return ttft, f"{type(exc).__name__}: {exc}"[:160]
    return ttft, ""


def client(base: str, load: Load, stop: threading.Event, seed: int) -> None:
    with httpx.Client(base_url=base, timeout=httpx.Timeout(120.0, connect=10.0)) as http:
        n = seed
        while not stop.is_set():
            t0 = time.monotonic()
            ttft, error = stream_once(http, PROMPTS[n % len(PROMPTS)])
            load.add(Sample(t0, time.monotonic(), ttft, error))
            n += 1


def servers(cluster: UpCluster, exe: str) -> list[psutil.Process]:
    assert cluster.proc is not None
    out = []
    for p in psutil.Process(cluster.proc.pid).children():
        with contextlib.suppress(psutil.Error):
            if p.name() == exe or exe in " ".join(p.cmdline()[:1]):
                out.append(p)
    return out


def valkey_primary(cluster: UpCluster) -> psutil.Process:
    """The valkey-server the sentinels name primary (not a sentinel)."""
    from redis.sentinel import Sentinel

    from libs.common.redis_client import parse_sentinel_url

    url = parse_sentinel_url(cluster.redis_url)
    _, port = Sentinel(list(url.sentinels), socket_timeout=2).discover_master(url.service)
    for p in servers(cluster, "valkey-server"):
        # Valkey rewrites its process title: "valkey-server 127.0.0.1:<port> [sentinel]".
        title = " ".join(p.cmdline())
        if "sentinel" not in title and f":{port}" in title:
            return p
    raise RuntimeError(f"no valkey-server on port {port}")


@dataclass
class Phase:
    name: str
    start: float
    end: float
    fault_at: float | None = None


def summarize(load: Load, phases: list[Phase]) -> list[dict[str, object]]:
    """Figures per phase (samples by the time they ended)."""
    base = [s.done - s.sent for s in load.samples if phases[0].start <= s.done < phases[0].end]
    slow_s = SLOW * percentile([x for x in base], 99) if base else float("inf")
    rows = []
    for ph in phases:
        got = [s for s in load.samples if ph.start <= s.done < ph.end]
        ok = [s for s in got if not s.error]
        lat = [s.done - s.sent for s in ok]
        ttfts = [s.ttft for s in ok if s.ttft is not None]
        recovery = 0.0
        if ph.fault_at is not None:
            bad = [s.done for s in got if s.error or s.done - s.sent > slow_s]
            recovery = max((b - ph.fault_at for b in bad), default=0.0)
            recovery = float(int(recovery) + 1) if bad else 0.0  # to the end of its second
        rows.append(
            {
                "phase": ph.name,
                "requests": len(got),
                "failed": len(got) - len(ok),
                "success": len(ok) / len(got) if got else float("nan"),
                "p50_s": percentile(lat, 50),
                "p99_s": percentile(lat, 99),
                "ttft_p99_s": percentile(ttfts, 99),
                "recovery_s": recovery,
                "errors": sorted({s.error for s in got if s.error})[:5],
            }
        )
    return rows


def plot(load: Load, phases: list[Phase], t0: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4))
    for failed, style in ((False, {"s": 6}), (True, {"s": 18, "c": "red", "marker": "x"})):
        pts = [s for s in load.samples if bool(s.error) == failed]
        if pts:
            ax.scatter(
                [s.done - t0 for s in pts],
                [s.done - s.sent for s in pts],
                label="failed" if failed else "answered",
                **style,
            )
    for ph in phases:
        if ph.fault_at is not None:
            ax.axvline(ph.fault_at - t0, color="grey", linestyle="--")
            ax.text(ph.fault_at - t0, ax.get_ylim()[1] * 0.95, f" {ph.name}", fontsize=8)
    ax.set_xlabel("seconds into the run")
    ax.set_ylabel("request latency, s")
    ax.set_title("sllm up --ha: streamed requests through a NATS server loss and a Valkey failover")
    ax.legend(loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--baseline", type=float, default=20.0)
    ap.add_argument("--phase", type=float, default=30.0)
    ap.add_argument("--dir", type=Path, default=Path(".bench/ha"))
    ap.add_argument("--plot", type=Path, default=Path("benchmarks/results/ha.png"))
    args = ap.parse_args()

    model = prepare_model(args.dir, "tiny")
    run = time.strftime("%Y%m%d-%H%M%S")
    cluster = UpCluster(
        args.dir / "state" / run,
        nodes=2,
        model=model.sllm,
        log_path=args.dir / f"up-{run}.log",
        extra_args=["--ha"],
    )
    cluster.start()
    load, stop = Load(), threading.Event()
    phases: list[Phase] = []
    try:
        with httpx.Client(base_url=cluster.base_url, timeout=120.0) as admin:
            admin.post(
                "/v1/deployments", json={"name": MODEL, "checkpoint_uri": model.sllm.as_uri()}
            ).raise_for_status()
            stream_once(admin, PROMPTS[0])  # warm: the instance is up
        threads = [
            threading.Thread(target=client, args=(cluster.base_url, load, stop, i))
            for i in range(args.clients)
        ]
        for t in threads:
            t.start()
        t0 = time.monotonic()
        time.sleep(args.baseline)
        phases.append(Phase("baseline", t0, time.monotonic()))
        faults: list[tuple[str, Callable[[], psutil.Process]]] = [
            ("NATS server killed", lambda: servers(cluster, "nats-server")[0]),
            ("Valkey primary killed", lambda: valkey_primary(cluster)),
        ]
        for name, find in faults:
            victim = find()
            victim.kill()
            at = time.monotonic()
            log(f"{name} (pid {victim.pid})")
            time.sleep(args.phase)
            phases.append(Phase(name, at, time.monotonic(), fault_at=at))
        stop.set()
        for t in threads:
            t.join(150)
    finally:
        stop.set()
        cluster.stop()

    rows = summarize(load, phases)
    ok = all(r["failed"] == 0 for r in rows) and all(
        float(str(r["recovery_s"])) < RECOVERY_TARGET_S for r in rows
    )
    lines = [
        f"# HA {run}: {args.clients} clients streaming, `sllm up --ha` (2 nodes x 1 CPU worker)",
        "",
        "| phase | requests | failed | success | latency p50 / p99 s | TTFT p99 s | recovery s |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {r['phase']} | {r['requests']} | {r['failed']} | {float(str(r['success'])):.1%} "
            f"| {float(str(r['p50_s'])):.2f} / {float(str(r['p99_s'])):.2f} "
            f"| {float(str(r['ttft_p99_s'])):.2f} | {float(str(r['recovery_s'])):.0f} |"
            for r in rows
        ),
        "",
        f"- targets: no failed request, recovery under {RECOVERY_TARGET_S:g} s: "
        + ("PASS" if ok else "FAIL"),
        *(f"- {r['phase']}: errors {r['errors']}" for r in rows if r["errors"]),
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    plot(load, phases, phases[0].start, args.plot)
    log(f"plot: {args.plot}")
    save_results(
        args.dir,
        f"ha-{run}",
        report,
        {
            "rows": rows,
            "samples": [[s.sent, s.done, s.ttft, s.error] for s in load.samples],
            "phases": [[p.name, p.start, p.end, p.fault_at] for p in phases],
        },
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
