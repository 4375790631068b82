"""Benchmarks: every claim wxtokend makes, as a figure measured side by side."""
