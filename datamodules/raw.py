"""The contract between raw-format parsers and the shared processing pipeline.

Every parser (``amazon.py``, ``online_retail.py``, ``tmall.py``, ``movielens.py``,
``tafeng.py``, ``atomic.py``) reads files exactly as their publisher distributes them and
returns one :class:`RawDataset`.  Nothing here filters, remaps or splits: that is
``processing.py``'s job, shared by all formats.

Columns of ``RawDataset.interactions`` (one row per interaction, any order):

========== ======== ===========================================================
user       str      the publisher's user id (or basket id, e.g. an InvoiceNo)
item       str      the publisher's item id
timestamp  int64    seconds since the Unix epoch (dates without time: 00:00 UTC)
========== ======== ===========================================================

Columns of ``RawDataset.items`` (one row per item with metadata; may be ``None``):

=========== ============== ==========================================================
item        str            the publisher's item id (same space as interactions.item)
text        str            the item text the papers embed (e.g. title + categories + brand)
categories  list[str]      category path, first level first (may be empty)
image       str | None     optional local image path or URL-like key (``imUrl``)
=========== ============== ==========================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

INTERACTION_COLUMNS = ("user", "item", "timestamp")
ITEM_COLUMNS = ("item", "text", "categories")


class DataFormatError(ValueError):
    """A raw file does not have the format its parser expects.

    The message always names the file, the line (1-based) when there is one, the offending
    content cut to 120 characters, and what was expected.
    """

    def __init__(
        self,
        path: str | Path,
        expected: str,
        line: int | None = None,
        content: str | None = None,
    ) -> None:
        self.path = str(path)
        self.line = line
        self.content = content
        self.expected = expected
        where = f"{self.path}" + (f", line {line}" if line is not None else "")
        msg = f"{where}: expected {expected}"
        if content is not None:
            shown = content if len(content) <= 120 else content[:117] + "..."
            msg += f"; got {shown!r}"
        super().__init__(msg)


@dataclass
class RawDataset:
    """What a parser hands to ``processing.py``.

    Attributes:
        name: short dataset name used in cache directory names (e.g. ``"Office"``).
        interactions: DataFrame with :data:`INTERACTION_COLUMNS` (see module docstring).
        items: DataFrame with :data:`ITEM_COLUMNS` (+ optional ``image``), or ``None``.
        sources: every raw file read, for the cache key (path, size and mtime are hashed).
        time_unit: the natural granularity of ``timestamp`` in seconds (86400 for date-only
            formats such as Amazon's ``unixReviewTime`` or Tafeng's dates, 1 otherwise).
        notes: human-readable lines for ``summary.md`` (e.g. "dropped 12 cancelled invoices").
    """

    name: str
    interactions: pd.DataFrame
    items: pd.DataFrame | None = None
    sources: list[Path] = field(default_factory=list)
    time_unit: int = 1
    notes: list[str] = field(default_factory=list)

    def validate(self) -> None:
        """Check the column contract; raise ``ValueError`` naming the missing column."""
        for col in INTERACTION_COLUMNS:
            if col not in self.interactions.columns:
                raise ValueError(f"{self.name}: parser returned no '{col}' interaction column")
        if self.items is not None:
            for col in ITEM_COLUMNS:
                if col not in self.items.columns:
                    raise ValueError(f"{self.name}: parser returned no '{col}' item column")
