"""Benchmarks: each a script run from the repository root, ``python -m bench.NAME``."""
