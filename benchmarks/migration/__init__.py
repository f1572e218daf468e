"""The live-migration benchmark (`make bench-migration`): see benchmarks/bench_migration.py."""
