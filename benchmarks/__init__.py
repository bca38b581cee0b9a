"""Measurements that are too slow or too noisy for unit tests; each writes to benchmarks/results/."""
