"""Shared pieces of the loader benchmark: the touch function, page-cache control, timing, results.

Every loader's result is made "ready" the same way: :func:`touch_tensors` reads every byte of
every returned tensor inside the timed region. torch is imported lazily so that the orchestrator
(``benchmarks.bench_loader``) never pays for it.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DIR = REPO_ROOT / ".bench" / "loader"
RESULT_PREFIX = "BENCH-RESULT "
DROP_CACHES = Path("/proc/sys/vm/drop_caches")
GB = 1e9
MiB = 1 << 20


def drop_caches() -> bool:
    """``sync; echo 3 > /proc/sys/vm/drop_caches``; False when this process may not do it."""
    os.sync()
    try:
        with DROP_CACHES.open("w") as f:
            f.write("3\n")
    except OSError:
        return False
    return True


def prewarm(paths: Iterable[Path]) -> int:
    """Read files fully so that they sit in the page cache (the warm condition); returns bytes."""
    total = 0
    buf = bytearray(64 * MiB)
    view = memoryview(buf)
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(view):
                total += n
    return total


def touch_tensor(t: torch.Tensor) -> int:
    """Read every byte of ``t``; returns the wrapping int64 sum of its 8-byte words.

    The sum runs in torch over an int64 view (about 30 GB/s on the development machine, so it
    costs well under a tenth of a cold load); a tail shorter than a word is zero-padded. A tensor
    whose storage offset is not a multiple of 8 bytes is copied into a padded buffer first: slower,
    but the checksum stays the same whichever loader produced the bytes.
    """
    import torch

    flat = t.detach()
    if not flat.is_contiguous():
        flat = flat.contiguous()
    b = flat.reshape(-1).view(torch.uint8)
    n = b.numel()
    if n == 0:
        return 0
    if b.storage_offset() % 8:  # rare: word boundaries must stay relative to the tensor's start
        padded = torch.zeros((n + 7) // 8 * 8, dtype=torch.uint8)
        padded[:n] = b
        return int(padded.view(torch.int64).sum().item())
    body = n // 8 * 8
    total = int(b[:body].view(torch.int64).sum().item()) if body else 0
    if body < n:  # a tail shorter than a word, zero-padded
        tail = torch.zeros(8, dtype=torch.uint8)
        tail[: n - body] = b[body:]
        total += int(tail.view(torch.int64).item())
    return total


def touch_tensors(tensors: Iterable[torch.Tensor]) -> tuple[int, int]:
    """Touch every byte of every distinct tensor; returns ``(bytes, checksum)``.

    Tensors sharing memory (tied weights in a model's ``state_dict``) are counted once.
    """
    seen: set[tuple[int, int]] = set()
    nbytes = 0
    checksum = 0
    for t in tensors:
        key = (t.data_ptr(), t.nbytes)
        if key in seen:
            continue
        seen.add(key)
        nbytes += t.nbytes
        checksum = (checksum + touch_tensor(t)) & 0xFFFF_FFFF_FFFF_FFFF
    return nbytes, checksum


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``."""

    def __init__(self) -> None:
        self.start = 0.0
        self.seconds = 0.0

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


@dataclasses.dataclass
class Sample:
    """One timed load: seconds from the start of the load to the last byte touched."""

    seconds: float
    nbytes: int
    cold: bool
    checksum: int | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def gbps(self) -> float:
        return self.nbytes / self.seconds / GB if self.seconds > 0 else 0.0

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Sample:
        return cls(
            seconds=float(d["seconds"]),
            nbytes=int(d["nbytes"]),
            cold=bool(d["cold"]),
            checksum=d.get("checksum"),
            extra=dict(d.get("extra", {})),
        )


Loaded = tuple[Any, "Iterable[torch.Tensor]"]
"""What a load returns: an owner to keep alive while touching, and the tensors to touch."""


def measure(
    load: Callable[[], Loaded],
    files: Sequence[Path],
    *,
    cold: bool,
    warm_after: bool,
    describe: Callable[[], dict[str, Any]] | None = None,
) -> list[Sample]:
    """Time ``load`` + touch once (after dropping the page cache when ``cold``).

    With ``warm_after``, the result is freed, ``files`` are read into the page cache, and the same
    load is timed again in this process: the warm sample (``extra["phase"] == "warm"``).
    """
    samples = []
    phases = [("main", cold)] + ([("warm", False)] if warm_after else [])
    for phase, drop in phases:
        dropped = drop_caches() if drop else False
        if phase == "warm":
            prewarm(files)
        with Timer() as t:
            holder, tensors = load()
            nbytes, checksum = touch_tensors(tensors)
        del holder, tensors
        gc.collect()
        extra: dict[str, Any] = {"phase": phase}
        if describe is not None:
            extra |= describe()
        samples.append(Sample(t.seconds, nbytes, dropped, checksum, extra=extra))
    return samples


def emit(samples: Sequence[Sample], info: dict[str, Any] | None = None) -> None:
    """Print the runner's result as one marked JSON line (libraries may print other lines)."""
    payload = {"samples": [dataclasses.asdict(s) for s in samples], "info": info or {}}
    print(RESULT_PREFIX + json.dumps(payload), flush=True)


def parse_result(stdout: str) -> tuple[list[Sample], dict[str, Any]]:
    """The inverse of :func:`emit`: find the marked line in a runner's stdout."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            payload = json.loads(line[len(RESULT_PREFIX) :])
            return [Sample.from_json(s) for s in payload["samples"]], payload["info"]
    raise ValueError("runner printed no result line")


def stats_dict(stats: object) -> dict[str, Any]:
    """A loader's stats object as plain JSON-able data (best effort)."""
    if stats is None:
        return {}
    if dataclasses.is_dataclass(stats) and not isinstance(stats, type):
        raw = dataclasses.asdict(stats)
    else:
        raw = {k: v for k, v in vars(stats).items() if not k.startswith("_")}
    out: dict[str, Any] = {}
    for k, v in raw.items():
        try:
            json.dumps(v)
        except (TypeError, ValueError):
            continue
        out[k] = v
    return out
