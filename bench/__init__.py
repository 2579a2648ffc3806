"""Benchmarks for textback: ``python -m bench.run --help``. Never run from the test suite."""
