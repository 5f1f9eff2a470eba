"""Benchmarks for gobucket_py. Run them all with ``make bench`` (``python -m bench``)."""
