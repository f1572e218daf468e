"""Traces in the Azure Functions 2019 format (``invocations_per_function_md.anon.dNN.csv``):
one row per function, ``HashOwner,HashApp,HashFunction,Trigger`` then columns ``1``..``1440``,
the function's invocations in each minute of the day.

Functions map to models by popularity rank (the busiest function to the first model, and so on,
wrapping around), so that the Zipf-like skew of the trace carries over to the models. The
trace's volume is rescaled to a target request rate: each minute's count times the scale is
the mean of a Poisson draw, and that many arrivals fall uniformly within the minute (a Poisson
process within the minute)."""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .llms import SimModel
from .scenario import Arrival
from .workloads import shaped

MINUTES = 1440
HEADER = ["HashOwner", "HashApp", "HashFunction", "Trigger", *map(str, range(1, MINUTES + 1))]


@dataclass(frozen=True)
class FunctionRow:
    function: str  # HashFunction (HashOwner/HashApp kept apart: only the key matters here)
    trigger: str
    per_minute: tuple[int, ...]  # 1440 counts

    @property
    def total(self) -> int:
        return sum(self.per_minute)


def read_trace(path: Path) -> list[FunctionRow]:
    """Every function of an Azure Functions invocation file (a missing minute counts 0)."""
    rows = []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {"HashOwner", "HashApp", "HashFunction", "Trigger"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: not an Azure Functions trace (no {sorted(missing)})")
        for r in reader:
            counts = tuple(int(r.get(str(m)) or 0) for m in range(1, MINUTES + 1))
            key = f"{r['HashOwner']}/{r['HashApp']}/{r['HashFunction']}"
            rows.append(FunctionRow(key, r["Trigger"], counts))
    return rows


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 50:  # normal approximation, plenty for counts this large
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def assign_models(rows: Sequence[FunctionRow], models: Sequence[SimModel]) -> dict[str, str]:
    """function -> model, by popularity rank (ties by function key), wrapping around."""
    ranked = sorted(rows, key=lambda r: (-r.total, r.function))
    return {r.function: models[k % len(models)].name for k, r in enumerate(ranked)}


def arrivals(
    rows: Sequence[FunctionRow],
    models: Sequence[SimModel],
    *,
    rate: float,
    start_minute: int = 0,
    minutes: int = 60,
    seed: int = 0,
) -> list[Arrival]:
    """The arrivals of ``minutes`` minutes from ``start_minute``, rescaled so that the mean
    rate over the window is ``rate`` requests/s."""
    window = range(start_minute, min(start_minute + minutes, MINUTES))
    total = sum(r.per_minute[m] for r in rows for m in window)
    if total == 0 or not window:
        return []
    scale = rate * 60 * len(window) / total
    to_model = assign_models(rows, models)
    rng = random.Random(seed)
    out: list[tuple[float, str]] = []
    for r in sorted(rows, key=lambda r: r.function):
        model = to_model[r.function]
        for k, m in enumerate(window):
            n = _poisson(rng, r.per_minute[m] * scale)
            out += [((k + rng.random()) * 60.0, model) for _ in range(n)]
    out.sort()
    return shaped(out, seed)


def write_trace(path: Path, rows: Sequence[FunctionRow]) -> None:
    """Write ``rows`` in the Azure Functions format (owner and app derived from the key)."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        for r in rows:
            owner, app, fn = ([*r.function.split("/"), "", ""])[:3]
            w.writerow([owner, app, fn, r.trigger, *r.per_minute])
