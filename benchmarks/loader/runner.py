"""Entry point of every measured subprocess: ``python -m benchmarks.loader.runner '<json>'``.

The JSON names the case and its parameters; the result is printed as one marked line (see
``common.emit``). Imports happen before the page cache is dropped and before any timer starts, so
no row pays for ``import torch``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.loader.common import Sample, emit, measure, touch_tensor


def _peer(params: dict[str, Any]) -> list[Sample]:
    from benchmarks.loader.peers import LOADERS

    load = LOADERS[params["name"]]
    path = Path(params["path"])
    return measure(
        lambda: load(path),
        [path],
        cold=bool(params.get("cold")),
        warm_after=bool(params.get("warm_after")),
    )


def run(params: dict[str, Any]) -> tuple[list[Sample], dict[str, Any]]:
    case = params["case"]
    import torch

    info: dict[str, Any] = {"torch_threads": torch.get_num_threads()}
    touch_tensor(
        torch.ones(1 << 20, dtype=torch.uint8)
    )  # one-time kernel/thread-pool setup, untimed
    if case == "odirect":
        from benchmarks.loader.limits import odirect

        configs = [str(c) for c in params["configs"]]
        files = [Path(p) for p in params["files"]]
        return odirect(files, configs, bool(params.get("cold", True))), info
    if case == "tmpfs":
        from benchmarks.loader.limits import tmpfs_touch

        return tmpfs_touch([Path(p) for p in params["files"]], params["variants"]), info
    if case == "peer":
        return _peer(params), info
    from benchmarks.loader import sllm_cases

    verify = params.get("verify")
    cold, warm_after = bool(params.get("cold")), bool(params.get("warm_after"))
    if case == "sllm-fresh":
        prefault, sealed = params.get("prefault"), bool(params.get("sealed"))
        path = Path(params["path"])
        return sllm_cases.fresh(path, cold, warm_after, verify, prefault, sealed), info
    if case == "sllm-model":
        return sllm_cases.model(Path(params["path"]), cold, warm_after, verify), info
    if case == "sllm-worker":
        samples, winfo = sllm_cases.worker(
            [Path(p) for p in params["paths"]],
            int(params["reps"]),
            int(params["capacity"]),
            cold,
            warm_after,
            verify,
        )
        return samples, info | winfo
    raise ValueError(f"unknown case {case!r}")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    samples, info = run(json.loads(args[0]))
    emit(samples, info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
