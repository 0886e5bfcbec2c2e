"""Benchmark pieces: workloads, timing, reports (grows into `moai-bench`)."""
