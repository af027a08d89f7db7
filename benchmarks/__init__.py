"""Benchmark scripts of fish-fl (run as files; see docs/benchmarks.md)."""
