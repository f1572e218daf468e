# ruff: noqa: RUF001
"""The benchmark's Markdown: the TTFT table with ratios, the per-phase breakdown, the overhead."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .common import median, percentile
from .samples import Overhead, Sample

OVERHEAD_TARGET_MS = 5.0
REGISTRY_TARGET = 2.0  # the registry cold start vs the cold-cache fresh-process baseline

CASES: dict[str, tuple[str, str]] = {
    "warm": ("sllm, warm", "instance already loaded"),
    "dram": ("sllm, cold: DRAM tier", "checkpoint staged in the node's DRAM tier (tmpfs)"),
    "ssd": ("sllm, cold: SSD tier", "checkpoint staged on the node's SSD tier only"),
    "registry": (
        "sllm, cold: registry",
        "nothing staged: the worker loads the HF directory (its sllm copy is made after)",
    ),
    "baseline-cold": (
        "baseline (fresh process)",
        "python start + imports + `from_pretrained` + tokenizer + `generate(max_new_tokens=1)`",
    ),
    "baseline-warm": ("baseline (fresh process)", "the same, model files in the page cache"),
}
SLLM_CASES = ("warm", "dram", "ssd", "registry")


@dataclass
class Run:
    """Everything the report shows."""

    header: list[str]
    samples: list[Sample]
    overhead: Overhead | None
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _s(x: float) -> str:
    return "—" if math.isnan(x) else f"{x:.3f}" if x < 10 else f"{x:.2f}"


def _x(num: float, den: float) -> str:
    return "—" if math.isnan(num) or math.isnan(den) or den <= 0 else f"{num / den:.1f}×"


def _cache(samples: Sequence[Sample], case: str) -> str:
    if case == "warm":
        return "n/a (loaded)"
    if case == "dram":
        return "n/a (tmpfs)"
    if case == "baseline-warm":
        return "warm (files read first)"
    dropped = {s.cache_dropped for s in samples}
    if dropped == {True}:
        return "dropped"
    if dropped == {False}:
        return "**not dropped** (not permitted)"
    return "mixed"


def _placed(samples: Sequence[Sample]) -> str:
    seen = sorted({f"{s.node} ({s.tier})" for s in samples if s.node})
    return ", ".join(seen) or "—"


def _by_case(samples: Sequence[Sample]) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {}
    for s in samples:
        out.setdefault(s.case, []).append(s)
    return out


def ttft_table(samples: Sequence[Sample]) -> list[str]:
    """One row per case: min and median TTFT and the ratios to the baseline's medians."""
    by = _by_case(samples)
    base = {
        k: median([s.ttft_s for s in by.get(k, [])]) for k in ("baseline-cold", "baseline-warm")
    }
    lines = [
        "| Case | How | Page cache | n | min s | median s | × vs baseline (cold cache) "
        "| × vs baseline (warm cache) | Placed on (tier) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for case, (label, how) in CASES.items():
        rows = by.get(case, [])
        if not rows:
            continue
        ttfts = [s.ttft_s for s in rows]
        med = median(ttfts)
        ratios = (
            ("—", "—")
            if case.startswith("baseline")
            else (
                _x(base["baseline-cold"], med),
                _x(base["baseline-warm"], med),
            )
        )
        lines.append(
            f"| {label} | {how} | {_cache(rows, case)} | {len(rows)} | {_s(min(ttfts))} "
            f"| {_s(med)} | {ratios[0]} | {ratios[1]} | {_placed(rows)} |"
        )
    for case in ("baseline-cold", "baseline-warm"):
        rows = by.get(case, [])
        if rows:
            fp = [s.phases["from_pretrained"] for s in rows]
            cache = "dropped" if case == "baseline-cold" else "warm"
            lines.append(
                f"| baseline: `from_pretrained` only | the load inside the process above "
                f"| {_cache(rows, case) if case == 'baseline-cold' else cache} | {len(rows)} "
                f"| {_s(min(fp))} | {_s(median(fp))} | — | — | — |"
            )
    return lines


def _med(rows: Sequence[Sample], key: str) -> float:
    return median([s.phases[key] for s in rows if key in s.phases])


def _read_cell(rows: Sequence[Sample]) -> str:
    read = _med(rows, "read")
    if math.isnan(read):
        return "—"
    nbytes = median([float(s.extra.get("read_bytes", 0)) for s in rows])
    tiers = sorted({str(s.extra.get("read_tier", "")) for s in rows} - {""})
    rate = f", {nbytes / read / 1e9:.1f} GB/s" if read > 0 and nbytes else ""
    return f"{_s(read)} ({'/'.join(tiers)}{rate})"


def _ensure_cell(rows: Sequence[Sample]) -> str:
    ensure = _med(rows, "ensure")
    parts = [
        f"{what} {_s(_med(rows, key))}"
        for key, what in (("fetch", "fetch+convert"), ("promote", "SSD→DRAM"))
        if not math.isnan(_med(rows, key))
    ]
    inner = f" ({'; '.join(parts)})" if parts else " (hit)"
    return f"{_s(ensure)}{inner}"


def breakdown_table(samples: Sequence[Sample]) -> list[str]:
    """Medians of each phase of the sllm cases (from the load.phase / storage.fetched events)."""
    by = _by_case(samples)
    lines = [
        "| Case | request → load starts (route + place) | ensure at storage | read weights "
        "| build model | tokenizer | → instance ready | ready → first token "
        "| of which worker prefill | TTFT |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in SLLM_CASES:
        rows = by.get(case, [])
        if not rows:
            continue
        if case == "warm":
            cells = ["—"] * 6 + [_s(median([s.ttft_s for s in rows]))]
        else:
            cells = [
                _s(_med(rows, "place")),
                _ensure_cell(rows),
                _read_cell(rows),
                _s(_med(rows, "build")),
                _s(_med(rows, "tokenizer")),
                _s(_med(rows, "to_ready")),
                _s(_med(rows, "after_ready")),
            ]
        cells += [_s(_med(rows, "prefill")), _s(median([s.ttft_s for s in rows]))]
        lines.append(f"| {CASES[case][0]} | " + " | ".join(cells) + " |")
    base_rows = [(c, by[c]) for c in ("baseline-cold", "baseline-warm") if by.get(c)]
    if base_rows:
        lines += [
            "",
            "| Baseline | process start | imports (torch, transformers) | `from_pretrained` "
            "| tokenizer | `generate` of 1 token | TTFT |",
            "|---|---|---|---|---|---|---|",
        ]
        for case, rows in base_rows:
            cells = [
                _s(_med(rows, k))
                for k in ("start", "imports", "from_pretrained", "tokenizer", "generate")
            ]
            label = "cold page cache" if case == "baseline-cold" else "warm page cache"
            lines.append(
                f"| {label} | " + " | ".join(cells) + f" | {_s(median([s.ttft_s for s in rows]))} |"
            )
    return lines


def overhead_table(o: Overhead) -> list[str]:
    """Minimums, medians and p90s of the warm-request paths (milliseconds), with the target."""

    def ms(x: float) -> str:
        return "—" if math.isnan(x) else f"{x * 1e3:.2f}"

    rows: list[tuple[str, list[float]]] = [
        ("HTTP → router → NATS → worker → back (`http.client`, keep-alive)", o.http_s),
        (
            "in-process: tokenize + prefill + 1 token + decode (`load_model`, same checkpoint)",
            o.inproc_s,
        ),
        ("overhead: HTTP − in-process, paired per iteration", o.paired_s),
        ("worker's forward for the request (`request.completed` prefill_s)", o.worker_prefill_s),
        ("overhead: HTTP − that same request's worker forward", o.minus_prefill_s),
        ("router's own view (`request.completed` total_s)", o.router_total_s),
    ]
    lines = ["| Path | n | min ms | median ms | p90 ms |", "|---|---|---|---|---|"]
    for label, xs in rows:
        lo = min(xs) if xs else float("nan")
        lines.append(
            f"| {label} | {len(xs)} | {ms(lo)} | {ms(median(xs))} | {ms(percentile(xs, 90))} |"
        )
    diff = median(o.http_s) - median(o.inproc_s)
    paired = median(o.paired_s)
    same = median(o.minus_prefill_s)

    def verdict(x: float) -> str:
        return "—" if math.isnan(x) else "PASS" if x * 1e3 <= OVERHEAD_TARGET_MS else "FAIL"

    lines += [
        "",
        f"- target: overhead ≤ {OVERHEAD_TARGET_MS:g} ms at the median. Median HTTP − median "
        f"in-process: {ms(diff)} ms → **{verdict(diff)}**; median of the paired differences: "
        f"{ms(paired)} ms → {verdict(paired)}; median of HTTP − the same request's worker "
        f"forward (immune to the compute's noise): {ms(same)} ms → {verdict(same)}",
        f"- the same greedy token through HTTP and in process: {'yes' if o.same_token else 'NO'}; "
        f"torch threads in process: {o.extra.get('torch_threads_in_process', '?')}",
    ]
    cpu: dict[str, float] = o.extra.get("cpu_ms_per_request") or {}
    if cpu:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]))
        lines.append(
            f"- CPU per warm request by process (ms; the worker's includes its forward): {parts}; "
            f"total {sum(cpu.values()):.2f}"
        )
    return lines


def registry_verdict(samples: Sequence[Sample]) -> list[str]:
    """The registry case (Hugging Face directory → first token) against its target: at least
    `REGISTRY_TARGET` times faster than the cold-cache fresh-process baseline of the same run."""
    by = _by_case(samples)
    reg = median([s.ttft_s for s in by.get("registry", [])])
    base = median([s.ttft_s for s in by.get("baseline-cold", [])])
    if math.isnan(reg) or math.isnan(base):
        return []
    ratio = base / reg
    verdict = "PASS" if ratio >= REGISTRY_TARGET else "FAIL"
    return [
        "",
        f"- registry (HF directory → first token) {_s(reg)} s vs the fresh-process baseline "
        f"(cold cache) {_s(base)} s: **{ratio:.2f}×** (target ≥ {REGISTRY_TARGET:g}×, i.e. "
        f"≤ {_s(base / REGISTRY_TARGET)} s) → {verdict}",
    ]


def markdown(run: Run) -> str:
    """The whole report."""
    out: list[str] = [*run.header, ""]
    if any(s.case in CASES for s in run.samples):
        out += ["### Time to first token", "", *ttft_table(run.samples), ""]
        out += [
            "Ratios: baseline median TTFT / sllm median TTFT (above 1×: sllm is faster).",
            *registry_verdict(run.samples),
            "",
            "### Where the time goes (medians, seconds)",
            "",
            *breakdown_table(run.samples),
            "",
        ]
    if run.overhead is not None:
        out += [
            f"### Router + bus overhead of a warm request (tiny model, max_tokens=1, "
            f"non-streamed, {run.overhead.n} sequential requests)",
            "",
            *overhead_table(run.overhead),
            "",
        ]
    if run.failures:
        out += ["### Failures", "", *[f"- {f}" for f in run.failures], ""]
    if run.notes:
        out += [*[f"- {n}" for n in run.notes], ""]
    return "\n".join(out)


def jsonable(x: Any) -> Any:
    """NaN-free JSON values."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    return x
