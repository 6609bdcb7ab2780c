"""Benchmark scripts that print markdown tables; their recorded results live in benchmarks/results/."""
