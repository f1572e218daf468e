"""The baseline, run from the benchmark: a fresh `baseline_child` process per sample."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.loader.common import drop_caches, prewarm

from .models import ModelFiles
from .samples import Sample

CHILD = Path(__file__).with_name("baseline_child.py")


def baseline_sample(
    model: ModelFiles, prompt: str, rep: int, *, cold: bool, threads: int = 0
) -> Sample:
    """One fresh process, timed from just before it is started to its first token.

    ``cold``: the page cache is dropped first (where permitted); otherwise the model's files are
    read into the page cache first. ``threads`` > 0 sets torch's thread count in the process.
    """
    dropped: bool | None = None
    if cold:
        dropped = drop_caches()
    else:
        prewarm(p for p in model.hf.iterdir() if p.is_file())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    env.pop("PYTHONPATH", None)
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(CHILD), str(model.hf), prompt, str(threads)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    line = next((x for x in reversed(proc.stdout.splitlines()) if x.startswith("BASELINE ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"baseline process failed ({proc.returncode}): {proc.stderr[-3000:]}")
    s = json.loads(line[len("BASELINE ") :])
    phases = {
        "start": s["started"] - t0,
        "imports": s["imported"] - s["started"],
        "from_pretrained": s["loaded"] - s["imported"],
        "tokenizer": s["tokenized"] - s["loaded"],
        "generate": s["first_token"] - s["tokenized"],
    }
    return Sample(
        case="baseline-cold" if cold else "baseline-warm",
        rep=rep,
        ttft_s=s["first_token"] - t0,
        cache_dropped=dropped,
        phases=phases,
        extra={k: s[k] for k in ("token_id", "prompt_tokens", "dtype", "threads")},
    )
