"""Helpers of the checkpoint-loading benchmark (``python -m benchmarks.bench_loader``).

Modules:

- ``common``: the touch function, page-cache control, timing and result records (no torch import
  at module level, so the orchestrator stays light).
- ``checkpoint``: the synthetic Llama-shaped checkpoint, written once per format into a cache
  directory and verified by a manifest.
- ``limits``: the machine's limits (parallel ``O_DIRECT`` reads, map-and-touch in tmpfs).
- ``peers``: the other loaders, used as they are normally used.
- ``sllm_cases``: sllm's loader, as a long-running worker uses it and in a fresh process.
- ``runner``: the entry point of every measured subprocess.
- ``report``: the table and the target checks.
"""
