# ruff: noqa: RUF001
"""The simulator's Markdown report and JSON record."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .run import Point, Preset, Workload
from .systems import SYSTEMS


def table(points: Sequence[Point]) -> list[str]:
    """One row per (rate, system), with each system's mean TTFT against sllm's."""
    sllm = {p.rate: p.summary["mean_ttft_s"] for p in points if p.system == "sllm"}
    lines = [
        "| rate req/s | system | requests | mean TTFT s | p50 s | p99 s | × sllm (mean) | cold "
        "starts | DRAM / SSD / registry loads | migrations / waits | GPU-hours |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in sorted(points, key=lambda p: (p.rate, list(SYSTEMS).index(p.system))):
        s = p.summary
        base = sllm.get(p.rate)
        ratio = f"{s['mean_ttft_s'] / base:.1f}×" if base else "—"
        lines.append(
            f"| {p.rate:g} | {SYSTEMS[p.system].label} | {p.requests:,} | {s['mean_ttft_s']:.2f} "
            f"| {s['p50_ttft_s']:.2f} | {s['p99_ttft_s']:.2f} | {ratio} | "
            f"{int(s['cold_starts']):,} | {int(s['dram_loads']):,} / {int(s['ssd_loads']):,} / "
            f"{int(s['registry_loads']):,} | {int(s['migrations'])} / {int(s['waits'])} | "
            f"{s['gpu_hours']:.1f} |"
        )
    return lines


def ordering(points: Sequence[Point]) -> list[str]:
    """Per rate, the systems from the lowest mean TTFT to the highest."""
    out = []
    for rate in sorted({p.rate for p in points}):
        here = sorted((p for p in points if p.rate == rate), key=lambda p: p.summary["mean_ttft_s"])
        out.append(f"- {rate:g} req/s: " + " < ".join(SYSTEMS[p.system].label for p in here))
    return out


def save(
    path: Path, preset: Preset, workload: Workload, points: Sequence[Point], text: str
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".md").write_text(text)
    record: dict[str, Any] = {
        "preset": preset.name,
        "nodes": preset.nodes,
        "hardware": vars(preset.hardware),
        "models": preset.models,
        "workload": {k: str(v) for k, v in vars(workload).items()},
        "points": [
            {
                "system": p.system,
                "rate": p.rate,
                "summary": p.summary,
                "wall_s": p.result.wall_s,
                "cpu_s": p.result.cpu_s,
                "events": p.result.events,
                "autoscaler_steps": p.result.autoscaler_steps,
            }
            for p in points
        ],
    }
    path.with_suffix(".json").write_text(json.dumps(record, indent=1))
