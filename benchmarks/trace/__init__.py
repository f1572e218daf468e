"""The many-model trace benchmark (`make bench-trace`): see benchmarks/bench_trace.py."""
