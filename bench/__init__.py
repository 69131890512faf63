"""Benchmarks: each script measures this project side by side with a baseline (docs/results.md)."""
