"""Benchmarks (DESIGN §12): run from the project root as ``python -m bench.run``."""
