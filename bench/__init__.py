"""Benchmark harness: `make bench` (bench/run.py). See docs/performance.md."""
