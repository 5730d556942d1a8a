"""Operational scripts (chaos, fuzzing): run from the project root as ``python -m scripts.NAME``."""
