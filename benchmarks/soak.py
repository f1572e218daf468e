"""`make soak`: a running cluster under mixed traffic for minutes, with a fault every minute.

One `sllm up` (2 nodes x 1 CPU worker, the tiny demo model under two permanent deployments),
client threads sending streamed and whole completions back to back with bursts, a third
deployment created and deleted over and over, and every ``--fault-every`` seconds a `kill -9`
of the next process in turn: a worker, a storage service, the scheduler, Valkey, nats-server.
The client retries nothing. It reports requests sent, answered, failed (by reason) and wrong
(greedy answers compared with the first answer to the same prompt), and every service's RSS
at the start and the end. Requests to the deployment being deleted do not count as lost.

    .venv/bin/python -m benchmarks.soak [--minutes 10] [--clients 4] [--fault-every 60]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from .serving.cluster import UpCluster
from .serving.common import log, save_results
from .serving.models import prepare_model

PROMPTS = [f"Tell me about the sea, part {i}." for i in range(8)]
FAULTS = ["worker", "storage", "scheduler", "valkey", "nats"]
PERMANENT = ["soak-a", "soak-b"]
CHURN = "soak-churn"


@dataclass
class Tally:
    sent: int = 0
    ok: int = 0
    wrong: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    losses: list[tuple[float, str, str]] = field(default_factory=list)  # (time, model, reason)
    churn_failed: int = 0
    reference: dict[tuple[str, str], str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _ask(http: httpx.Client, model: str, prompt: str, stream: bool) -> str:
    body = {"model": model, "prompt": prompt, "max_tokens": 24, "temperature": 0}
    if not stream:
        r = http.post("/v1/completions", json=body)
        r.raise_for_status()
        return str(r.json()["choices"][0]["text"])
    parts: list[str] = []
    with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line.removeprefix("data: "))
                if "error" in chunk:
                    raise RuntimeError(f"stream error: {chunk['error'].get('message', '')}")
                parts.extend(c.get("text", "") for c in chunk["choices"])
    return "".join(parts)


def client(
    base: str, tally: Tally, stop: threading.Event, seed: int, burst: threading.Event
) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=base, timeout=httpx.Timeout(180.0, connect=10.0)) as http:
        while not stop.is_set():
            if not burst.is_set() and rng.random() < 0.5:
                time.sleep(rng.uniform(0.0, 0.5))
            model = rng.choice([*PERMANENT, CHURN])
            prompt = rng.choice(PROMPTS)
            with tally.lock:
                tally.sent += 1
            try:
                text = _ask(http, model, prompt, stream=rng.random() < 0.7)
            except (httpx.HTTPError, RuntimeError, KeyError) as exc:
                reason = (
                    f"HTTP {exc.response.status_code}"
                    if isinstance(exc, httpx.HTTPStatusError)
                    else type(exc).__name__
                )
                with tally.lock:
                    if model == CHURN:
                        tally.churn_failed += 1
                    else:
                        tally.failed[reason] += 1
                        tally.losses.append((time.time(), model, f"{reason}: {exc}"[:300]))
                continue
            with tally.lock:
                tally.ok += 1
                ref = tally.reference.setdefault((model.removesuffix("-churn"), prompt), text)
                if model != CHURN and ref != text:
                    tally.wrong += 1


def rss_by_service(cluster: UpCluster) -> dict[str, float]:
    """Resident MiB per process kind (services by name, nats-server, valkey-server)."""
    out: dict[str, float] = {}
    assert cluster.proc is not None
    for p in psutil.Process(cluster.proc.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            cmd = p.cmdline()
            mod = next((a for a in cmd if a.startswith("services.")), "")
            name = mod.removeprefix("services.") or p.name()
            out[name] = out.get(name, 0.0) + p.memory_info().rss / 2**20
    return out


def victim(cluster: UpCluster, kind: str, rng: random.Random) -> psutil.Process | None:
    assert cluster.proc is not None
    found = []
    for p in psutil.Process(cluster.proc.pid).children():
        with contextlib.suppress(psutil.Error):
            cmd = " ".join(p.cmdline())
            if (
                f"services.{kind}" in cmd
                or (kind == "valkey" and "valkey-server" in cmd)
                or (kind == "nats" and p.name() == "nats-server")
            ):
                found.append(p)
    return rng.choice(found) if found else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--fault-every", type=float, default=60.0)
    ap.add_argument("--dir", type=Path, default=Path(".bench/soak"))
    args = ap.parse_args()

    model = prepare_model(args.dir, "tiny")
    run = time.strftime("%Y%m%d-%H%M%S")
    cluster = UpCluster(
        args.dir / "state" / run, nodes=2, model=model.sllm, log_path=args.dir / f"up-{run}.log"
    )
    cluster.start()
    admin = httpx.Client(base_url=cluster.base_url, timeout=120.0)
    uri = model.sllm.as_uri()
    tally, stop, burst = Tally(), threading.Event(), threading.Event()
    rng = random.Random(0)
    try:
        for name in [*PERMANENT, CHURN]:
            admin.post(
                "/v1/deployments", json={"name": name, "checkpoint_uri": uri}
            ).raise_for_status()
        for name in PERMANENT:  # warm: one instance each, and the reference answers
            _ask(admin, name, PROMPTS[0], stream=False)
        rss_start = rss_by_service(cluster)
        threads = [
            threading.Thread(target=client, args=(cluster.base_url, tally, stop, i, burst))
            for i in range(args.clients)
        ]
        for t in threads:
            t.start()
        t0 = time.monotonic()
        faults: list[str] = []
        next_fault, next_churn, next_burst = t0 + args.fault_every, t0 + 20.0, t0 + 30.0
        while time.monotonic() - t0 < args.minutes * 60:
            now = time.monotonic()
            if now >= next_fault:
                kind = FAULTS[len(faults) % len(FAULTS)]
                proc = victim(cluster, kind, rng)
                if proc is not None:
                    proc.kill()
                    faults.append(f"{time.monotonic() - t0:.0f}s kill -9 {kind}")
                    log(faults[-1])
                next_fault = now + args.fault_every
            if now >= next_churn:  # the churn deployment: deleted, created again
                with contextlib.suppress(httpx.HTTPError):
                    admin.delete(f"/v1/deployments/{CHURN}")
                    admin.post("/v1/deployments", json={"name": CHURN, "checkpoint_uri": uri})
                next_churn = now + 20.0
            if now >= next_burst:  # 5 s of back-to-back requests every 30 s
                if burst.is_set():
                    burst.clear()
                else:
                    burst.set()
                next_burst = now + (5.0 if burst.is_set() else 30.0)
            time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join(200)
        rss_end = rss_by_service(cluster)
    finally:
        stop.set()
        admin.close()
        cluster.stop()

    lost = sum(tally.failed.values())
    lines = [
        f"# Soak {run}: {args.minutes:g} min, {args.clients} clients, a fault every "
        f"{args.fault_every:g} s",
        "",
        f"- requests sent {tally.sent}, answered {tally.ok}, lost {lost} "
        f"({dict(tally.failed)}), wrong {tally.wrong}; to the churned deployment, failed "
        f"{tally.churn_failed} (not counted as lost)",
        f"- faults: {', '.join(faults) or 'none'}",
        *(
            f"- lost at {time.strftime('%H:%M:%S', time.localtime(t))}: {m}: {why}"
            for t, m, why in tally.losses[:20]
        ),
        "",
        "| process | RSS MiB at start | at end |",
        "|---|---|---|",
        *(
            f"| {k} | {rss_start.get(k, 0):.0f} | {rss_end.get(k, 0):.0f} |"
            for k in sorted(set(rss_start) | set(rss_end))
        ),
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    save_results(
        args.dir,
        f"soak-{run}",
        report,
        {
            "sent": tally.sent,
            "ok": tally.ok,
            "lost": dict(tally.failed),
            "wrong": tally.wrong,
            "faults": faults,
            "rss_start": rss_start,
            "rss_end": rss_end,
        },
    )
    return 0 if lost == 0 and tally.wrong == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
