"""Benchmarks: `python -m benchmarks.<name>`; each ends by printing `name: value unit` lines."""
