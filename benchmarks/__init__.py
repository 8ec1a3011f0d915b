"""Benchmarks of the whole platform on realistic volumes (``attendance bench ...``; docs/benchmarks.md)."""
