# ruff: noqa: RUF001
"""The benchmark's one table (Markdown), its target checks, and the JSON record of a run."""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any

from benchmarks.loader.common import GB, Sample

PEER_KINDS = ("peer",)


@dataclasses.dataclass
class Row:
    """One line of the table: a loader (or a limit) under one page-cache condition."""

    key: str  # e.g. "sllm-worker", "safetensors", "limit-odirect"
    kind: str  # "limit", "sllm" or "peer"
    label: str
    how: str
    condition: str  # "cold", "warm" or "tmpfs"
    samples: list[Sample] = dataclasses.field(default_factory=list)
    warm: list[Sample] = dataclasses.field(default_factory=list)
    error: str | None = None
    note: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.samples) and self.error is None

    @property
    def min_s(self) -> float:
        return min(s.seconds for s in self.samples)

    @property
    def median_s(self) -> float:
        return statistics.median(s.seconds for s in self.samples)

    @property
    def nbytes(self) -> int:
        return self.samples[0].nbytes

    @property
    def best_gbps(self) -> float:
        return max(s.gbps for s in self.samples)

    @property
    def median_gbps(self) -> float:
        return statistics.median(s.gbps for s in self.samples)

    @property
    def warm_gbps(self) -> float | None:
        return statistics.median(s.gbps for s in self.warm) if self.warm else None

    @property
    def really_cold(self) -> bool:
        return all(s.cold for s in self.samples)

    def cache_label(self) -> str:
        if self.condition == "cold":
            return "cold (dropped)" if self.really_cold else "warm (page cache not dropped)"
        return "tmpfs (DRAM tier)"

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if self.ok:
            d |= {
                "min_s": self.min_s,
                "median_s": self.median_s,
                "best_gbps": self.best_gbps,
                "median_gbps": self.median_gbps,
                "warm_median_gbps": self.warm_gbps,
            }
        return d


def _find(rows: list[Row], key: str, condition: str | None = None) -> Row | None:
    for r in rows:
        if r.key == key and (condition is None or r.condition == condition) and r.ok:
            return r
    return None


def reference(rows: list[Row], condition: str) -> Row | None:
    """The limit a row of this condition is compared with (median against median)."""
    if condition == "cold":
        return _find(rows, "limit-odirect")
    if condition == "tmpfs":
        return _find(rows, "limit-tmpfs")
    return None


def best_peer(rows: list[Row], condition: str) -> Row | None:
    peers = [r for r in rows if r.kind == "peer" and r.condition == condition and r.ok]
    return max(peers, key=lambda r: r.median_gbps, default=None)


def best_warm_peer(rows: list[Row]) -> Row | None:
    peers = [r for r in rows if r.kind == "peer" and r.ok and r.warm]
    return max(peers, key=lambda r: r.warm_gbps or 0.0, default=None)


def _ratio(row: Row, ref: Row | None) -> str:
    if ref is None or not row.ok or ref is row:
        return "—"
    return f"{row.median_gbps / ref.median_gbps:.2f}×"


def markdown_table(rows: list[Row]) -> str:
    head = (
        "| Loader | How | Page cache | n | min s | median s | best GB/s | median GB/s "
        "| × limit | × best peer | warm GB/s (median) |"
    )
    lines = [head, "|" + "---|" * 11]
    warm_peer = best_warm_peer(rows)
    for r in rows:
        if not r.ok:
            lines.append(
                f"| {r.label} | {r.how} | {r.condition} | 0 | — | — | — | — | — | — | "
                f"failed: {(r.error or 'no samples')[:100]} |"
            )
            continue
        ref = reference(rows, r.condition)
        peer = best_peer(rows, r.condition) if r.kind != "limit" else None
        warm = "—"
        if r.warm_gbps is not None:
            warm = f"{r.warm_gbps:.2f}"
            if warm_peer is not None and warm_peer is not r and warm_peer.warm_gbps:
                warm += f" ({r.warm_gbps / warm_peer.warm_gbps:.2f}× best peer)"
        lines.append(
            f"| {r.label} | {r.how} | {r.cache_label()} | {len(r.samples)} | {r.min_s:.2f} "
            f"| {r.median_s:.2f} | {r.best_gbps:.2f} | {r.median_gbps:.2f} "
            f"| {_ratio(r, ref) if r.kind != 'limit' else '—'} | {_ratio(r, peer)} | {warm} |"
        )
    return "\n".join(lines)


def target_checks(rows: list[Row]) -> list[str]:
    """The issue's targets, each with its measured value and PASS/FAIL (or n/a)."""
    out: list[str] = []
    worker = _find(rows, "sllm-worker", "cold")
    odirect = _find(rows, "limit-odirect")
    raw = _find(rows, "limit-odirect-read")
    peer = best_peer(rows, "cold")
    if worker and odirect:
        ratio = worker.median_gbps / odirect.median_gbps
        extra = f"; {worker.median_gbps / raw.median_gbps:.2f}× the raw read alone" if raw else ""
        out.append(
            f"- cold, worker steady state ≥ 0.9× parallel O_DIRECT (read + touch): "
            f"{ratio:.2f}×{extra} → {'PASS' if ratio >= 0.9 else 'FAIL'}"
        )
    else:
        out.append("- cold, worker steady state vs O_DIRECT: n/a (not measured)")
    if worker and peer:
        ahead = all(
            worker.median_gbps > r.median_gbps
            for r in rows
            if r.kind == "peer" and r.condition == "cold" and r.ok
        )
        out.append(
            f"- cold, worker steady state ahead of every peer: {worker.median_gbps:.2f} GB/s vs "
            f"best peer {peer.label} {peer.median_gbps:.2f} GB/s → {'PASS' if ahead else 'FAIL'}"
        )
    else:
        out.append("- cold, worker ahead of every peer: n/a (not measured)")
    defaults = _find(rows, "sllm-shm")
    # The verdict is on the DRAM tier as the system loads it: the worker verifies a copy the
    # storage service verified and sealed (unchanged: not hashed again), mapped lazily
    # (verify=True, prefault=False). Defaults and the other ways are shown too.
    shm = _find(rows, "sllm-shm-worker") or defaults
    tmpfs = _find(rows, "limit-tmpfs")
    if shm and tmpfs:
        ratio = shm.median_gbps / tmpfs.median_gbps
        others = [
            f"{label}: {r.median_gbps / tmpfs.median_gbps:.2f}×"
            for label, r in (
                ("library defaults", defaults if shm is not defaults else None),
                ("verify=False", _find(rows, "sllm-shm-noverify")),
                ("hashed at load", _find(rows, "sllm-shm-hash")),
                ("not verified (the worker before)", _find(rows, "sllm-shm-lazy")),
            )
            if r
        ]
        note = f" ({'; '.join(others)})" if others else ""
        who = "as the worker loads it" if shm is not defaults else "library defaults"
        out.append(
            f"- DRAM tier ≥ 0.9× tmpfs map + touch, {who}: {ratio:.2f}×{note} → "
            f"{'PASS' if ratio >= 0.9 else 'FAIL'}; the floor for a verified load, 0.8× → "
            f"{'PASS' if ratio >= 0.8 else 'FAIL'}"
        )
    else:
        out.append("- DRAM tier vs tmpfs: n/a (not measured)")
    model = _find(rows, "sllm-model", "cold")
    fresh = _find(rows, "sllm-fresh", "cold")
    if model and fresh:
        added = model.median_s / fresh.median_s - 1
        out.append(
            f"- load_model adds ≤ 5% to load_checkpoint (fresh process, cold, medians): "
            f"{added * 100:+.1f}% → {'PASS' if added <= 0.05 else 'FAIL'}"
        )
    else:
        out.append("- load_model overhead: n/a (not measured)")
    return out


def checksum_note(rows: list[Row]) -> str:
    """Whether every loader handed back the same bytes for checkpoint 0 (limits read raw files)."""
    seen: dict[str, set[int]] = {}
    for r in rows:
        if r.kind == "limit" or not r.ok:
            continue
        for s in r.samples:
            if s.checksum is None or s.extra.get("ckpt", 0) != 0:
                continue
            seen.setdefault(r.label, set()).add(s.checksum)
    values = {c for v in seen.values() for c in v}
    if not values:
        return "checksums: none recorded"
    if len(values) == 1:
        return f"checksums: all {len(seen)} loaders returned identical bytes for checkpoint 0"
    detail = ", ".join(f"{k}: {sorted(v)}" for k, v in seen.items())
    return f"checksums DIFFER between loaders: {detail}"


def summary_bytes(rows: list[Row]) -> str:
    sizes = sorted({r.nbytes for r in rows if r.ok})
    return ", ".join(f"{n / GB:.3f} GB" for n in sizes)
