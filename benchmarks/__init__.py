"""Benchmarks behind `flywheel bench ...`; each prints one JSON document with its measurements."""
