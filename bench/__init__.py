"""Benchmarks of the face service: `python -m bench.accuracy` and `python -m bench.latency`."""
