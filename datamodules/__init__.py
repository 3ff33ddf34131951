"""Data layer of the zoo: raw formats -> processed cache -> batches."""

from datamodules.base import SequentialDataModule

__all__ = ["SequentialDataModule"]
