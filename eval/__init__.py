"""Evaluation: analytic oracles, likelihood, sample quality, timing, benchmarks."""
