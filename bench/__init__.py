"""Benchmarks: real servers under a real load generator (wrk); see bench/run.py."""
