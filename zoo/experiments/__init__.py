"""Experiment runners installed with the package: ``zoo reproduce``, ``zoo ablate``, ``zoo compare``, ``zoo tune``."""
