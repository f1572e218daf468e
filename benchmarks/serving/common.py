"""Shared helpers of the serving benchmark: paths, logging, page-cache control, statistics."""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DIR = REPO_ROOT / ".bench" / "serving"
MiB = 1 << 20


def log(msg: str) -> None:
    """One progress line on stderr (stdout carries only the report)."""
    print(
        f"[{Path(sys.argv[0]).stem or 'bench'} {time.strftime('%H:%M:%S')}] {msg}",
        file=sys.stderr,
        flush=True,
    )


def median(xs: Sequence[float]) -> float:
    """Median, NaN for an empty sequence."""
    return statistics.median(xs) if xs else float("nan")


def percentile(xs: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation; NaN when empty."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def cpu_busy() -> tuple[float, float]:
    """``(busy, total)`` CPU-seconds of the whole machine so far (``/proc/stat``)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0, 0.0
    ticks = [float(x) for x in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0.0)
    hz = float(os.sysconf("SC_CLK_TCK"))
    return (sum(ticks) - idle) / hz, sum(ticks) / hz


def own_cpu() -> float:
    """CPU-seconds of this process and its waited-for descendants (the cluster, once stopped)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def save_results(root: Path, stem: str, report: str, payload: dict[str, object]) -> Path:
    """Write ``report`` (Markdown) and ``payload`` (JSON, with the run's arguments and every
    sample) as ``<root>/results/<stem>.md`` and ``.json``; returns the path without suffix."""
    import json

    results = root / "results"
    results.mkdir(parents=True, exist_ok=True)
    path = results / stem
    path.with_suffix(".md").write_text(report)
    path.with_suffix(".json").write_text(json.dumps(payload, indent=1))
    log(f"saved {path}.md and .json")
    return path
