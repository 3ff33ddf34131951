"""Experiments over finished runs: paper tables, ablations, comparisons with confidence intervals, tuning."""
