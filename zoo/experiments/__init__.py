"""Experiment runner: paper tables (reproduce), ablations, comparisons and tuning through `zoo fit`."""
