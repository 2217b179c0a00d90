"""Benchmarks: each figure side by side with its baseline, measured in one run."""
