"""Benchmarks: per-op microbenchmarks (ops.py) and end-to-end runs (run.py)."""
