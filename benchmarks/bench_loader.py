# ruff: noqa: RUF001
"""Checkpoint-loading benchmark: sllm's loader against its peers and this machine's limits.

``python -m benchmarks.bench_loader [--size-gib 4] [--reps 3] [--dir DIR] [--only ...] [--keep]``

One synthetic Llama-shaped bf16 checkpoint (made once, cached under ``--dir``), in every format,
loaded to ready CPU tensors with every byte touched, each measurement in a fresh subprocess
(``benchmarks.loader.runner``), except sllm's worker steady state, which is one process loading
several checkpoints with one pool. Prints ONE Markdown table plus the target checks, and saves the
table (``.md``) and every sample (``.json``) under ``<dir>/results/``, and draws the figure
(``--plot``, a PNG). This process never imports torch; see ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import plotting
from benchmarks.loader import checkpoint as ck
from benchmarks.loader.common import (
    DEFAULT_DIR,
    GB,
    REPO_ROOT,
    MiB,
    Sample,
    drop_caches,
    parse_result,
)
from benchmarks.loader.report import (
    Row,
    checksum_note,
    markdown_table,
    summary_bytes,
    target_checks,
)

LIMITS = ("odirect", "tmpfs")
SLLM = ("sllm-worker", "sllm-fresh", "sllm-shm", "sllm-model")
PEERS = ("safetensors", "torch", "runai", "tensorizer")
GROUPS = {"limits": LIMITS, "sllm": SLLM, "peers": PEERS}
PEER_FORMAT = {
    "safetensors": "safetensors",
    "runai": "safetensors",
    "torch": "torch",
    "tensorizer": "tensorizer",
}
PEER_LABEL = {
    "safetensors": ("safetensors", "`safetensors.torch.load_file`"),
    "torch": ("torch", "`torch.load(mmap=True, weights_only=True)`"),
    "runai": ("runai-model-streamer", "`SafetensorsStreamer` over the .safetensors, defaults"),
    "tensorizer": ("tensorizer", "`TensorDeserializer(device='cpu')`, defaults"),
}
DEFAULT_ODIRECT = "t8x8,t16x16,t8x64,p4x8,p8x8,p16x16,p8x64"
SLLM_API = (
    "from libs.loader import save_checkpoint, load_checkpoint, load_model, HostPool, LoadStats"
)


def log(msg: str) -> None:
    print(f"[bench-loader {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cpu_seconds() -> tuple[float, float, float]:
    """``(busy, total, ours)`` CPU-seconds so far: the whole machine (``/proc/stat``) and this
    process with its finished children. Their difference over the run is what other processes
    (other builds and tests on a shared machine) took from the CPUs while we measured."""
    import resource

    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    busy = (user + nice + system + irq + softirq + steal) / hz
    total = busy + (idle + iowait) / hz
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    ours = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    return busy, total, ours


def parse_only(text: str | None) -> list[str]:
    every = [*LIMITS, *SLLM, *PEERS]
    if not text:
        return every
    chosen: set[str] = set()
    for item in (t.strip() for t in text.split(",") if t.strip()):
        if item in GROUPS:
            chosen.update(GROUPS[item])
        elif item in every:
            chosen.add(item)
        elif item in ("runai-model-streamer", "limit-odirect", "limit-tmpfs"):
            chosen.add({"runai-model-streamer": "runai"}.get(item, item.removeprefix("limit-")))
        else:
            raise SystemExit(
                f"--only: unknown name {item!r} (known: {', '.join(every + list(GROUPS))})"
            )
    return [c for c in every if c in chosen]


def run_case(params: dict[str, Any], timeout: float) -> tuple[list[Sample], dict[str, Any]]:
    """Run one measurement in a fresh interpreter; raises RuntimeError with its stderr tail."""
    env = dict(
        os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    )
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.loader.runner", json.dumps(params)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
        raise RuntimeError(f"exit {proc.returncode}: " + " / ".join(tail))
    return parse_result(proc.stdout)


def sllm_importable() -> tuple[bool, str]:
    proc = subprocess.run(
        [sys.executable, "-c", SLLM_API], cwd=REPO_ROOT, capture_output=True, text=True
    )
    if proc.returncode == 0:
        return True, ""
    lines = proc.stderr.strip().splitlines()
    return False, lines[-1] if lines else f"exit {proc.returncode}"


@dataclasses.dataclass
class Plan:
    args: argparse.Namespace
    spec: ck.Spec
    cases: list[str]
    sllm_ok: bool
    rows: list[Row] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def path(self, fmt: str, seed: int = 0) -> Path:
        return ck.format_path(self.args.dir, self.spec, fmt, seed)

    def row(self, key: str, kind: str, label: str, how: str, condition: str) -> Row:
        r = Row(key=key, kind=kind, label=label, how=how, condition=condition)
        self.rows.append(r)
        return r

    def measure(self, row: Row, params: dict[str, Any]) -> dict[str, Any]:
        if row.error is not None:
            return {}
        try:
            samples, info = run_case(params, self.args.timeout)
        except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
            row.error = str(e)
            log(f"{row.label} ({row.condition}) failed: {e}")
            return {}
        for s in samples:
            warm = s.extra.get("phase") == "warm"
            (row.warm if warm else row.samples).append(s)
            cond = "warm" if warm else row.condition
            log(f"{row.label}, {row.how[:40]} ({cond}): {s.seconds:.3f} s, {s.gbps:.2f} GB/s")
        return info


def ensure_checkpoints(plan: Plan) -> list[Path]:
    """Write the formats this run needs (unless cached); returns the limit's data files."""
    fmts: list[str] = []
    if plan.sllm_ok and any(c in plan.cases for c in (*SLLM, *LIMITS)):
        fmts.append("sllm")
    for c in PEERS:
        if c in plan.cases and PEER_FORMAT[c] not in fmts:
            fmts.append(PEER_FORMAT[c])
    if not plan.sllm_ok and any(c in plan.cases for c in LIMITS) and "safetensors" not in fmts:
        fmts.append("safetensors")
    seeds = plan.args.worker_ckpts if "sllm-worker" in plan.cases and plan.sllm_ok else 1
    want = ck.wanted(fmts, seeds)
    manifest = ck.Manifest(plan.args.dir, plan.spec)
    missing = [(f, s) for f, s in want if not manifest.valid(f, s)]
    if missing:
        log(f"writing {len(missing)} checkpoint file set(s) ({plan.spec.nbytes / GB:.2f} GB each)")
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.loader.checkpoint",
                "--dir",
                str(plan.args.dir),
                "--layers",
                str(plan.spec.layers),
                "--vocab",
                str(plan.spec.vocab),
                "--want",
                ",".join(f"{f}:{s}" for f, s in missing),
            ],
            cwd=REPO_ROOT,
            env=env,
            check=True,
        )
        manifest = ck.Manifest(plan.args.dir, plan.spec)
    else:
        log(f"reusing cached checkpoints in {plan.args.dir / plan.spec.ident}")
    if "sllm" in fmts:
        return ck.sllm_data_files(plan.path("sllm"))
    if "safetensors" in fmts:
        return [plan.path("safetensors")]
    return []


def run_odirect(plan: Plan, files: list[Path]) -> None:
    reps, cold = plan.args.reps, True
    configs = [c.strip() for c in plan.args.odirect.split(",") if c.strip()]
    how = "parallel `O_DIRECT` preadv, then the same touch"
    row = plan.row("limit-odirect", "limit", "limit: parallel O_DIRECT read + touch", how, "cold")
    sweep = Row("sweep", "limit", "sweep", "", "cold")
    plan.measure(
        sweep,
        {"case": "odirect", "files": [str(f) for f in files], "configs": configs, "cold": cold},
    )
    if not sweep.ok:
        row.error = sweep.error
        return
    best = min(sweep.samples, key=lambda s: float(s.extra["read_s"]))  # the config only moves reads
    config = str(best.extra["config"])
    mode, workers, chunk = str(best.extra["mode"]), best.extra["workers"], best.extra["chunk_mib"]
    plan.info["odirect_sweep"] = [dataclasses.asdict(s) for s in sweep.samples]
    sweep_text = ", ".join(
        f"{s.extra['config']} {s.nbytes / float(s.extra['read_s']) / GB:.2f}" for s in sweep.samples
    )
    row.how = f"{how}; best of the sweep ({sweep_text} GB/s read): {workers} {mode} × {chunk} MiB"
    params = {
        "case": "odirect",
        "files": [str(f) for f in files],
        "configs": [config],
        "cold": cold,
    }
    if reps == 1:  # smoke runs: the sweep's best sample stands for the single repetition
        row.samples = [best]
    else:
        for _ in range(reps):
            plan.measure(row, params)
    read_how = f"the same reads, without the touch ({workers} {mode} × {chunk} MiB)"
    read = plan.row(
        "limit-odirect-read", "limit", "limit: parallel O_DIRECT read alone", read_how, "cold"
    )
    read.error = row.error
    read.samples = [dataclasses.replace(s, seconds=float(s.extra["read_s"])) for s in row.samples]


def run_tmpfs(plan: Plan, files: list[Path]) -> None:
    """Copy the sllm checkpoint (or the limit's files) to /dev/shm; the tmpfs limit and sllm there."""
    shm_root = Path(tempfile.mkdtemp(prefix="sllm-bench-", dir="/dev/shm"))
    try:
        sllm_src = plan.path("sllm") if plan.sllm_ok else None
        if sllm_src is not None and sllm_src.is_dir():
            dst = shm_root / "sllm"
            shutil.copytree(sllm_src, dst)
            shm_files = ck.sllm_data_files(dst)
        else:
            dst = shm_root
            shm_files = []
            for f in files:
                shutil.copy(f, shm_root / f.name)
                shm_files.append(shm_root / f.name)
        log(f"copied {sum(f.stat().st_size for f in shm_files) / GB:.2f} GB to {shm_root}")
        if "tmpfs" in plan.cases:
            row = plan.row(
                "limit-tmpfs",
                "limit",
                "limit: tmpfs map + touch",
                "mmap every file, same touch",
                "tmpfs",
            )
            variants = ["mmap", "map_populate", "madvise:2", "madvise:4"]
            for _ in range(plan.args.reps):
                plan.measure(
                    row,
                    {"case": "tmpfs", "files": [str(f) for f in shm_files], "variants": variants},
                )
            if row.ok:  # keep the better variant (by median) as the limit
                by: dict[str, list[Sample]] = {}
                for s in row.samples:
                    by.setdefault(str(s.extra["variant"]), []).append(s)
                best_v = min(by, key=lambda v: sorted(x.seconds for x in by[v])[len(by[v]) // 2])
                row.samples = by[best_v]
                medians = ", ".join(
                    f"{v} {statistics.median(x.gbps for x in xs):.2f}" for v, xs in by.items()
                )
                row.how = f"`mmap` every file, same touch; best of ({medians} GB/s): {best_v}"
                plan.info["tmpfs_variants"] = {v: [x.seconds for x in xs] for v, xs in by.items()}
        if "sllm-shm" in plan.cases and plan.sllm_ok:
            shm_runs: list[tuple[str, str, bool | None, bool | None, bool]] = [
                ("sllm-shm", "defaults", plan.args.verify, None, False)
            ]
            if plan.args.verify is None:  # also show what checksum verification costs here
                shm_runs += [
                    ("sllm-shm-noverify", "verify=False", False, None, False),
                    # How the worker loads a DRAM-tier copy: verify=True, the copy as the
                    # storage service leaves it (verified on its way in and sealed: unchanged
                    # partitions are not hashed again), no pre-faulting.
                    (
                        "sllm-shm-worker",
                        "as the worker: verify=True on the sealed copy, prefault=False",
                        True,
                        False,
                        True,
                    ),
                    # The same load of a copy changed since its seal (or never sealed): every
                    # chunk is hashed at load, the hash faulting the pages in.
                    (
                        "sllm-shm-hash",
                        "verify=True, unsealed copy (hashed at load), prefault=False",
                        True,
                        False,
                        False,
                    ),
                    # The worker's way before DRAM-tier copies were verified: nothing checked.
                    (
                        "sllm-shm-lazy",
                        "verify=False, prefault=False (the worker before)",
                        False,
                        False,
                        False,
                    ),
                ]
            jobs = []
            for key, what, verify, prefault, sealed in shm_runs:
                how = f"fresh process, from the /dev/shm copy ({what})"
                row = plan.row(key, "sllm", "sllm load_checkpoint", how, "tmpfs")
                params = {
                    "case": "sllm-fresh",
                    "path": str(dst),
                    "cold": False,
                    "verify": verify,
                    "sealed": sealed,
                }
                if prefault is not None:
                    params["prefault"] = prefault
                jobs.append((row, params))
            for _ in range(plan.args.reps):
                for row, params in jobs:
                    plan.measure(row, params)
    finally:
        if plan.args.keep:
            log(f"--keep: leaving {shm_root}")
        else:
            shutil.rmtree(shm_root, ignore_errors=True)


def run_worker(plan: Plan) -> None:
    n = plan.args.worker_ckpts
    paths = [plan.path("sllm", s) for s in range(n)]
    capacity = max(sum(f.stat().st_size for f in ck.sllm_data_files(p)) for p in paths)
    capacity = (capacity + 64 * MiB - 1) // (64 * MiB) * (64 * MiB) + 256 * MiB
    how = f"one worker, HostPool pre-touched, {n} distinct checkpoints in turn"
    row = plan.row("sllm-worker", "sllm", "sllm load_checkpoint", how, "cold")
    info = plan.measure(
        row,
        {
            "case": "sllm-worker",
            "paths": [str(p) for p in paths],
            "reps": plan.args.reps,
            "capacity": capacity,
            "cold": True,
            "warm_after": not plan.args.no_warm,
            "verify": plan.args.verify,
        },
    )
    plan.info["sllm_worker"] = info


def run_fresh_and_peers(plan: Plan) -> None:
    """Cold rows, one fresh process per sample, repetitions interleaved across loaders.

    Unless ``--no-warm``, each process then frees its result, reads the files into the page cache
    and loads again: the warm column.
    """
    condition, cold, warm = "cold", True, not plan.args.no_warm
    jobs: list[tuple[Row, dict[str, Any]]] = []
    if plan.sllm_ok and "sllm-fresh" in plan.cases:
        r = plan.row(
            "sllm-fresh",
            "sllm",
            "sllm load_checkpoint",
            "fresh process, defaults, no pool",
            condition,
        )
        jobs.append(
            (
                r,
                {
                    "case": "sllm-fresh",
                    "path": str(plan.path("sllm")),
                    "cold": cold,
                    "warm_after": warm,
                    "verify": plan.args.verify,
                },
            )
        )
    if plan.sllm_ok and "sllm-model" in plan.cases:
        r = plan.row("sllm-model", "sllm", "sllm load_model", "fresh process, defaults", condition)
        jobs.append(
            (
                r,
                {
                    "case": "sllm-model",
                    "path": str(plan.path("sllm")),
                    "cold": cold,
                    "warm_after": warm,
                    "verify": plan.args.verify,
                },
            )
        )
    for peer in PEERS:
        if peer in plan.cases:
            label, how = PEER_LABEL[peer]
            r = plan.row(peer, "peer", label, how, condition)
            path = plan.path(PEER_FORMAT[peer])
            jobs.append(
                (
                    r,
                    {
                        "case": "peer",
                        "name": peer,
                        "path": str(path),
                        "cold": cold,
                        "warm_after": warm,
                    },
                )
            )
    for _ in range(plan.args.reps):
        for r, params in jobs:
            plan.measure(r, params)


def order_rows(rows: list[Row]) -> list[Row]:
    cond = {"cold": 0, "tmpfs": 1, "warm": 2}
    kind = {"limit": 0, "sllm": 1, "peer": 2}
    return sorted(rows, key=lambda r: (cond[r.condition], kind[r.kind]))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_loader", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--size-gib", type=float, default=4.0, help="checkpoint size (default 4)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions per row (default 3)")
    ap.add_argument(
        "--dir", type=Path, default=DEFAULT_DIR, help=f"cache directory (default {DEFAULT_DIR})"
    )
    ap.add_argument(
        "--only", help="comma-separated: " + ",".join([*GROUPS, *LIMITS, *SLLM, *PEERS])
    )
    ap.add_argument("--keep", action="store_true", help="keep the /dev/shm copy (default: removed)")
    ap.add_argument(
        "--clean", action="store_true", help="delete this size's cached checkpoints at the end"
    )
    ap.add_argument(
        "--worker-ckpts",
        type=int,
        default=3,
        help="distinct checkpoints the worker loads (default 3)",
    )
    ap.add_argument("--no-warm", action="store_true", help="skip the warm (page cache) column")
    ap.add_argument(
        "--odirect",
        default=DEFAULT_ODIRECT,
        help=f"O_DIRECT sweep: tNxC (N threads) or pNxC (N processes), C MiB chunks (default {DEFAULT_ODIRECT})",
    )
    ap.add_argument(
        "--verify",
        type=lambda s: {"on": True, "off": False}[s],
        default=None,
        choices=[True, False],
        metavar="{on,off}",
        help="pass verify= to sllm (default: the library's default)",
    )
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per subprocess")
    ap.add_argument(
        "--plot",
        type=Path,
        default=plotting.RESULTS / "loader.png",
        help="the figure (PNG; default benchmarks/results/loader.png)",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.dir = args.dir.resolve()
    spec = ck.Spec.for_size(args.size_gib)
    cases = parse_only(args.only)
    sllm_ok, why = (
        sllm_importable()
        if any(c in SLLM for c in cases) or "tmpfs" in cases
        else (False, "not selected")
    )
    plan = Plan(args=args, spec=spec, cases=cases, sllm_ok=sllm_ok)
    if not sllm_ok and any(c in SLLM for c in cases):
        plan.notes.append(f"sllm's loader was not importable ({why}): its rows are missing.")
        log(f"sllm's loader not importable: {why}")
    can_drop = drop_caches()
    if not can_drop:
        plan.notes.append(
            "Page cache could NOT be dropped here: 'cold' rows are warm (page cache not dropped)."
        )
    started = dt.datetime.now()
    cpu0 = cpu_seconds()
    log(
        f"{spec.ident}: {spec.nbytes / GB:.3f} GB in {spec.num_tensors} tensors; cases: {', '.join(cases)}"
    )
    files = ensure_checkpoints(plan)
    if "odirect" in cases and files:
        run_odirect(plan, files)
    if ("tmpfs" in cases or "sllm-shm" in cases) and files:
        run_tmpfs(plan, files)
    if sllm_ok and "sllm-worker" in cases:
        run_worker(plan)
    run_fresh_and_peers(plan)
    plan.rows = order_rows(plan.rows)
    cpu1 = cpu_seconds()
    others = max(0.0, (cpu1[0] - cpu0[0]) - (cpu1[2] - cpu0[2]))
    available = cpu1[1] - cpu0[1]
    plan.info["cpu"] = {"others_s": others, "available_s": available, "ours_s": cpu1[2] - cpu0[2]}
    if available > 0:
        plan.notes.append(
            f"other processes used {others:.0f} of the {available:.0f} CPU-seconds available during "
            f"the run ({100 * others / available:.0f}%)"
            + ("; the CPUs were shared while measuring." if others / available > 0.10 else ".")
        )
    text = render(plan, started, can_drop)
    print(text)
    save(plan, text, started)
    draw(plan, started)
    if args.clean:
        shutil.rmtree(args.dir / spec.ident, ignore_errors=True)
    return 0 if all(r.ok for r in plan.rows) else 1


def render(plan: Plan, started: dt.datetime, can_drop: bool) -> str:
    spec = plan.spec
    head = [
        f"Checkpoint: synthetic Llama-3.2-3B-shaped, bf16, {spec.layers} layers, vocab {spec.vocab}, "
        f"{spec.num_tensors} tensors, {spec.nbytes / GB:.3f} GB ({spec.nbytes / (1 << 30):.2f} GiB) of tensor bytes "
        f"(row bytes: {summary_bytes(plan.rows)}).",
        f"Run: {started:%Y-%m-%d %H:%M}, {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{plan.args.reps} repetitions; page cache {'dropped before every cold sample' if can_drop else 'NOT dropped'}.",
        "GB/s = 1e9 bytes/s; every sample is load + touch of every byte (int64 sum per tensor), timed in "
        "the loading process after its imports; × columns compare medians (limit: O_DIRECT read + touch "
        "for cold rows, tmpfs map + touch for the DRAM tier). Warm column: the same process frees its "
        "result, reads the files into the page cache, and loads again.",
        "",
    ]
    body = [
        markdown_table(plan.rows),
        "",
        *target_checks(plan.rows),
        f"- {checksum_note(plan.rows)}",
    ]
    return "\n".join(head + body + [f"- note: {n}" for n in plan.notes])


def save(plan: Plan, text: str, started: dt.datetime) -> None:
    out = plan.args.dir / "results"
    out.mkdir(parents=True, exist_ok=True)
    stem = f"bench-loader-{plan.spec.ident}-{started:%Y%m%d-%H%M%S}"
    (out / f"{stem}.md").write_text(text + "\n")
    payload = {
        "started": started.isoformat(),
        "spec": dataclasses.asdict(plan.spec),
        "args": {k: str(v) for k, v in vars(plan.args).items()},
        "rows": [r.to_json() for r in plan.rows],
        "notes": plan.notes,
        "info": plan.info,
    }
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=1, default=str))
    log(f"saved {out / stem}.md and .json")


def draw(plan: Plan, started: dt.datetime) -> None:
    if not plotting.available():
        log(plotting.MISSING)
        return
    from benchmarks.loader.plot import plot

    cpu = plan.info.get("cpu", {})
    shared = (
        f"; others took {100 * cpu['others_s'] / cpu['available_s']:.0f}% of the CPU"
        if cpu.get("available_s")
        else ""
    )
    title = (
        f"Checkpoint loading, {plan.spec.nbytes / GB:.2f} GB bf16, load + touch of every byte: "
        f"{started:%Y-%m-%d %H:%M}, {os.cpu_count()} CPUs, {plan.args.reps} rep(s){shared}"
    )
    log(f"plot: {plot(plan.rows, plan.args.plot, title)}")


if __name__ == "__main__":
    raise SystemExit(main())
