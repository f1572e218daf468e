"""Benchmarks of sllm (run as modules, e.g. ``python -m benchmarks.bench_loader``)."""
