"""Data layer of the zoo: raw formats -> processed cache -> batches."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported on first use (below); this line tells type checkers and zoo/catalog.py
    from datamodules.base import SequentialDataModule

__all__ = ["SequentialDataModule"]


def __getattr__(name: str) -> Any:
    """``datamodules.SequentialDataModule`` on first use: importing ``datamodules.processing`` or
    ``datamodules.formats`` (``zoo data``) must not pull in torch and Lightning."""
    if name == "SequentialDataModule":
        from datamodules.base import SequentialDataModule

        return SequentialDataModule
    raise AttributeError(f"module 'datamodules' has no attribute {name!r}")
