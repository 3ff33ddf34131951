"""Amazon review data, as McAuley's group distributes it (2014 and 2018 releases).

Amazon 2018 (MIRACLE, HORAE, HPCL4SR; https://nijianmo.github.io/amazon/):

* ratings-only CSV, no header, one line ``item,user,rating,timestamp``
  (e.g. ``Office_Products.csv``);
* or the 5-core reviews, one JSON object a line with ``reviewerID``, ``asin``,
  ``unixReviewTime`` (e.g. ``Office_Products_5.json.gz``);
* metadata ``meta_<Category>.json(.gz)``, one JSON object a line: ``asin``, ``title``,
  ``brand``, ``category`` (list, first level first), ``description``, ``imageURLHighRes``.

Amazon 2014 (HM4SR, TiMiRec; http://jmcauley.ucsd.edu/data/amazon/):

* ``reviews_<Category>_5.json.gz`` (``reviewerID``, ``asin``, ``unixReviewTime``);
* ``meta_<Category>.json.gz`` whose lines are Python dict literals, not JSON (single
  quotes): ``asin``, ``title``, ``brand``, ``categories`` (list of category paths),
  ``imUrl``.  Parsed with ``ast.literal_eval`` only — never ``eval``; a line that is not a
  literal (a call, a name) is a :class:`~datamodules.raw.DataFormatError`.

Item text (what UniSRec/MIRACLE/HORAE embed): ``title + categories + brand``, each field
cleaned as UniSRec's ``clean_text`` (HTML unescaped and stripped, whitespace collapsed, one
trailing period, fields of 2,000+ characters dropped) and empty fields skipped.  Timestamps
are ``unixReviewTime``: whole days (00:00 UTC), so ``time_unit = 86400``.  Duplicate metadata
lines (the 2018 files have some) keep the first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from datamodules.raw import RawDataset
from datamodules.rawio import (
    clean_labels,
    compose_text,
    first_per_item,
    join_lists,
    make_dataset,
    read_csv_checked,
    read_records,
    stem_name,
)

DAY = 86400
RATINGS_EXPECTED = "item,user,rating,timestamp (no header)"
REVIEWS_EXPECTED = "a review object with reviewerID, asin, unixReviewTime"
META2018_EXPECTED = "a metadata object with asin (title, brand, category optional)"
META2014_EXPECTED = "a metadata dict with asin (title, brand, categories, imUrl optional)"


def read_amazon_ratings(path: str | Path) -> pd.DataFrame:
    """The 2018 ratings-only CSV → DataFrame ``user, item, timestamp`` (rating dropped)."""
    frame = read_csv_checked(
        path,
        names=["item", "user", "rating", "timestamp"],
        dtypes={"item": "str", "user": "str", "rating": "float64", "timestamp": "int64"},
        expected=RATINGS_EXPECTED,
    )
    return frame[["user", "item", "timestamp"]]


def read_amazon_reviews(path: str | Path) -> pd.DataFrame:
    """Review lines (2018 JSON or 2014 JSON/dict literals) → ``user, item, timestamp``."""
    frame = read_records(
        path,
        fields={"reviewerID": "str", "asin": "str", "unixReviewTime": "int"},
        required=("reviewerID", "asin", "unixReviewTime"),
        expected=REVIEWS_EXPECTED,
    )
    return pd.DataFrame(
        {
            "user": frame["reviewerID"].to_numpy(),
            "item": frame["asin"].to_numpy(),
            "timestamp": frame["unixReviewTime"].to_numpy(dtype="int64"),
        }
    )


def read_amazon2018_meta(path: str | Path) -> pd.DataFrame:
    """``meta_<Category>.json(.gz)`` of 2018 → items ``item, text, categories, image``."""
    meta = read_records(
        path,
        fields={"asin": "str", "title": "str", "brand": "str", "category": "list",
                "imageURLHighRes": "list"},
        required=("asin",),
        expected=META2018_EXPECTED,
    )
    meta = first_per_item(meta, key="asin")
    categories = clean_labels(meta["category"])
    return _items(meta, categories, image=meta["imageURLHighRes"].map(_first_or_none))


def read_amazon2014_meta(path: str | Path, category_paths: str = "all") -> pd.DataFrame:
    """``meta_<Category>.json.gz`` of 2014 (dict literals) → ``item, text, categories, image``.

    ``categories`` is a list of paths; the item's category list is their flattening, path by
    path, duplicates dropped (so its first element is the first path's first level).
    ``category_paths="first"`` keeps only the first path (HM4SR's category labels and text).
    """
    if category_paths not in ("all", "first"):
        raise ValueError(f"amazon2014: category_paths must be 'all' or 'first', got {category_paths!r}")
    meta = read_records(
        path,
        fields={"asin": "str", "title": "str", "brand": "str", "categories": "any",
                "imUrl": "str"},
        required=("asin",),
        expected=META2014_EXPECTED,
    )
    meta = first_per_item(meta, key="asin")
    cats = meta["categories"]
    if category_paths == "first":
        cats = cats.map(lambda v: v[0] if isinstance(v, list) and v and isinstance(v[0], list) else v)
    categories = clean_labels(cats)
    return _items(meta, categories, image=meta["imUrl"])


def _items(meta: pd.DataFrame, categories: pd.Series, image: pd.Series) -> pd.DataFrame:
    """Item table with UniSRec's text: title + categories + brand."""
    text = compose_text([meta["title"], join_lists(categories, " "), meta["brand"]])
    return pd.DataFrame(
        {
            "item": meta["asin"].to_numpy(),
            "text": text.to_numpy(),
            "categories": categories.to_numpy(),
            # object dtype keeps None (pandas 3 would infer "str" and turn None into NaN)
            "image": pd.Series(np.where(image.notna().to_numpy(), image.to_numpy(dtype=object),
                                        None), dtype=object),
        }
    )


def _first_or_none(value: object) -> str | None:
    return str(value[0]) if isinstance(value, list) and value else None


def read_amazon2018(
    ratings: str | Path | None = None,
    reviews: str | Path | None = None,
    meta: str | Path | None = None,
    name: str | None = None,
) -> RawDataset:
    """Amazon 2018: the ratings CSV *or* the 5-core review JSON lines, plus optional metadata.

    Args:
        ratings: ``<Category>.csv`` (``item,user,rating,timestamp``, no header).
        reviews: ``<Category>_5.json(.gz)`` (used when ``ratings`` is not given).
        meta: ``meta_<Category>.json(.gz)``; without it ``items`` is ``None``.
        name: dataset name (default: from the file name, e.g. ``Office_Products``).
    """
    if (ratings is None) == (reviews is None):
        raise ValueError("amazon2018 needs exactly one of ratings= (CSV) or reviews= (5-core JSON)")
    source = Path(ratings if ratings is not None else reviews)  # type: ignore[arg-type]
    frame = read_amazon_ratings(source) if ratings is not None else read_amazon_reviews(source)
    items = read_amazon2018_meta(meta) if meta is not None else None
    return _dataset(frame, items, source, meta, name, "Amazon 2018")


def read_amazon2014(
    reviews: str | Path,
    meta: str | Path | None = None,
    name: str | None = None,
    category_paths: str = "all",
) -> RawDataset:
    """Amazon 2014: ``reviews_<Category>_5.json.gz`` plus optional ``meta_<Category>.json.gz``.

    ``category_paths``: ``"all"`` flattens every category path; ``"first"`` keeps the first path
    only (HM4SR: 192 categories on Games).
    """
    frame = read_amazon_reviews(reviews)
    items = read_amazon2014_meta(meta, category_paths) if meta is not None else None
    return _dataset(frame, items, Path(reviews), meta, name, "Amazon 2014")


def _dataset(
    frame: pd.DataFrame,
    items: pd.DataFrame | None,
    source: Path,
    meta: str | Path | None,
    name: str | None,
    release: str,
) -> RawDataset:
    name = name or stem_name(source, prefixes=("reviews_", "ratings_"), suffixes=("_5",))
    notes = [f"{release}: {len(frame):,} interactions read from {source.name}"]
    sources = [source]
    if items is not None and meta is not None:
        sources.append(Path(meta))
        with_text = int((items["text"] != "").sum())
        notes.append(
            f"{release}: {len(items):,} items with metadata in {Path(meta).name}, "
            f"{with_text:,} with non-empty text (title + categories + brand)"
        )
    return make_dataset(
        name, frame["user"], frame["item"], frame["timestamp"], items=items,
        sources=sources, time_unit=DAY, notes=notes,
    )
