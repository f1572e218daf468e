"""sllm's loader (``libs.loader``), measured the two ways it is used.

- Worker steady state: ONE process allocates its ``HostPool`` (pre-touched; excluded from timing),
  loads the first checkpoint once untimed (thread pools and such warm up as in a long-running
  worker), then loads several different checkpoints one after another, dropping the page cache
  before each and freeing each result (its regions go back to the pool) before the next.
- Fresh process: ``load_checkpoint(path)`` (or ``load_model(path)``) with its defaults, no pool.

Every call uses the library's defaults (``verify``, ``threads``, ``zero_copy``) unless the run
says otherwise; the loader's ``LoadStats`` are recorded with each sample.
"""

from __future__ import annotations

import gc
import resource
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.loader.common import (
    Loaded,
    Sample,
    Timer,
    drop_caches,
    measure,
    prewarm,
    stats_dict,
    touch_tensors,
)


def _kwargs(verify: bool | None, prefault: bool | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {} if verify is None else {"verify": verify}
    if prefault is not None:
        out["prefault"] = prefault
    return out


def _new_stats() -> Any:
    from libs.loader import LoadStats

    try:
        return LoadStats()
    except TypeError:
        return None


def data_files(path: Path) -> list[Path]:
    from benchmarks.loader.checkpoint import sllm_data_files

    return sllm_data_files(path)


class _Checkpoint:
    """``load_checkpoint`` as a ``measure`` callable that keeps the last call's stats."""

    def __init__(self, path: Path, **kwargs: Any) -> None:
        self.path = path
        self.kwargs = kwargs
        self.stats: Any = None

    def __call__(self) -> Loaded:
        from libs.loader import load_checkpoint

        self.stats = _new_stats()
        extra = {} if self.stats is None else {"stats": self.stats}
        sd = load_checkpoint(self.path, **self.kwargs, **extra)
        return sd, sd.values()

    def describe(self) -> dict[str, Any]:
        return {"stats": stats_dict(self.stats)}


def fresh(
    path: Path,
    cold: bool,
    warm_after: bool,
    verify: bool | None = None,
    prefault: bool | None = None,
    sealed: bool = False,
) -> list[Sample]:
    """``load_checkpoint`` with the defaults (no pool), as a fresh process does it.

    ``sealed``: first (untimed) seal the copy as the storage service does after verifying it
    into the DRAM tier (libs/loader/seal.py), and remove the seal afterwards; without it any
    seal is removed first, so that every other row hashes what it verifies.
    """
    from libs.loader.format import read_layout
    from libs.loader.seal import SEAL_FILE, write_seal

    seal = path / SEAL_FILE
    seal.unlink(missing_ok=True)
    if sealed:
        write_seal(path, read_layout(path).partitions)
    load = _Checkpoint(path, **_kwargs(verify, prefault))
    try:
        return measure(
            load, data_files(path), cold=cold, warm_after=warm_after, describe=load.describe
        )
    finally:
        seal.unlink(missing_ok=True)


def model(path: Path, cold: bool, warm_after: bool, verify: bool | None = None) -> list[Sample]:
    """``load_model``: the checkpoint into a ready transformers model (its state_dict touched).

    transformers and the Llama model classes are imported first, untimed, like every other import
    of the runner (a serving process has them imported long before its first load).
    """
    from transformers import AutoConfig, GenerationConfig, LlamaForCausalLM  # noqa: F401

    from libs.loader import load_model

    def load() -> Loaded:
        m = load_model(path, **_kwargs(verify))
        return m, m.state_dict().values()

    return measure(load, data_files(path), cold=cold, warm_after=warm_after)


def worker(
    paths: Sequence[Path],
    reps: int,
    capacity: int,
    cold: bool,
    warm_after: bool,
    verify: bool | None = None,
) -> tuple[list[Sample], dict[str, Any]]:
    """The long-running worker: one pool, ``reps`` rounds over ``paths``, each load timed.

    With ``warm_after``, each round is followed by one warm load (files read into the page cache
    first) of that round's last checkpoint, with the same pool.
    """
    from libs.loader import HostPool

    with Timer() as alloc:
        pool = HostPool(capacity)
        for name in ("touch", "prefault", "warm"):  # if touching is a separate step, do it now
            fn = getattr(pool, name, None)
            if callable(fn):
                fn()
                break
    kwargs = dict(_kwargs(verify), pool=pool)
    if cold:  # so that the warm-up load takes the read-into-pool path, like the timed ones
        drop_caches()
    with Timer() as warmup:
        sd = _Checkpoint(paths[0], **kwargs)()[0]
        touch_tensors(sd.values())
        del sd
        gc.collect()
    rss_after_warmup = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    samples = []

    def one(i: int, rep: int, phase: str) -> None:
        dropped = drop_caches() if phase == "main" and cold else False
        if phase == "warm":
            prewarm(data_files(paths[i]))
        load = _Checkpoint(paths[i], **kwargs)
        with Timer() as t:
            holder, tensors = load()
            nbytes, checksum = touch_tensors(tensors)
        del holder, tensors
        gc.collect()
        extra = {"phase": phase, "ckpt": i, "rep": rep, **load.describe()}
        samples.append(Sample(t.seconds, nbytes, dropped, checksum, extra=extra))

    for rep in range(reps):
        for i in range(len(paths)):
            one(i, rep, "main")
        if warm_after:
            one(len(paths) - 1, rep, "warm")
    info = {
        "pool_capacity": capacity,
        "pool_alloc_touch_s": alloc.seconds,
        "warmup_load_s": warmup.seconds,
        "max_rss_after_warmup": rss_after_warmup,
        "max_rss_end": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    return samples, info
