"""Pieces of the serving benchmark (``python -m benchmarks.bench_serving``); light to import."""
