"""Benchmarks: `python -m bench [--quick] [--only NAME]` runs them all; see `bench.__main__`."""
