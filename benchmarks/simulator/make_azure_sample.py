"""Writes the small synthetic trace in the Azure Functions 2019 format that ships with the
simulator (``data/azure_functions_sample.csv``): 100 functions over one day, a mix like the
real trace's (Shahrad et al., ATC'20): timer functions firing on a fixed period, HTTP and queue
functions with bursty on/off traffic whose daily volume is heavy-tailed, and rare ones.

``python -m benchmarks.simulator.make_azure_sample [--functions 100] [--seed 2019]``
"""

from __future__ import annotations

import argparse
import hashlib
import math
import random
from pathlib import Path

from .azure_trace import MINUTES, FunctionRow, write_trace

DEFAULT_PATH = Path(__file__).parent / "data" / "azure_functions_sample.csv"


def _key(rng: random.Random) -> str:
    return "/".join(hashlib.sha256(str(rng.random()).encode()).hexdigest()[:32] for _ in range(3))


def _timer(rng: random.Random) -> list[int]:
    period = rng.choice((1, 5, 10, 15, 30, 60))
    phase = rng.randrange(period)
    return [1 if (m - phase) % period == 0 else 0 for m in range(MINUTES)]


def _bursty(rng: random.Random) -> list[int]:
    # Daily volume heavy-tailed (log-normal); on/off periods, a diurnal swing.
    level = rng.lognormvariate(0.0, 1.6)
    counts, on = [], rng.random() < 0.5
    for m in range(MINUTES):
        if rng.random() < (0.05 if on else 0.02):
            on = not on
        diurnal = 1.0 + 0.6 * math.sin(2 * math.pi * (m / MINUTES - 0.3))
        lam = level * diurnal * (8.0 if on else 0.3)
        counts.append(_draw(rng, lam))
    return counts


def _rare(rng: random.Random) -> list[int]:
    calls = rng.randint(1, 12)
    out = [0] * MINUTES
    for _ in range(calls):
        out[rng.randrange(MINUTES)] += 1
    return out


def _draw(rng: random.Random, lam: float) -> int:
    # A Poisson count by inversion (lam is small here).
    k, p, target = 0, math.exp(-lam), rng.random()
    cum = p
    while target > cum and k < 1000:
        k += 1
        p *= lam / k
        cum += p
    return k


def make_rows(functions: int, seed: int) -> list[FunctionRow]:
    rng = random.Random(seed)
    rows = []
    for _ in range(functions):
        kind = rng.random()
        if kind < 0.3:
            rows.append(FunctionRow(_key(rng), "timer", tuple(_timer(rng))))
        elif kind < 0.85:
            trigger = rng.choice(("http", "http", "queue", "event"))
            rows.append(FunctionRow(_key(rng), trigger, tuple(_bursty(rng))))
        else:
            rows.append(
                FunctionRow(_key(rng), rng.choice(("http", "orchestration")), tuple(_rare(rng)))
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--functions", type=int, default=100)
    p.add_argument("--seed", type=int, default=2019)
    p.add_argument("--out", type=Path, default=DEFAULT_PATH)
    args = p.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_trace(args.out, make_rows(args.functions, args.seed))
    print(f"{args.out}: {args.out.stat().st_size / 1e3:.0f} kB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
