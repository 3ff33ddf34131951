"""The synthetic raw-file generator: deterministic, exact sizes, parseable by the parsers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from datamodules.formats import read_raw
from datamodules.synthetic import (
    DEFAULT_SEED,
    PERIODS,
    SYNTHETIC_FORMATS,
    generate_log,
    main,
    write_synthetic,
)

SIZES = dict(users=60, items=40, interactions=600)


def _bytes(paths: dict[str, Path]) -> dict[str, bytes]:
    return {key: path.read_bytes() for key, path in paths.items()}


@pytest.mark.parametrize("fmt", SYNTHETIC_FORMATS)
def test_same_seed_same_bytes(tmp_path: Path, fmt: str) -> None:
    options = {"gz": True, "reviews": True} if fmt == "amazon2018" else {}
    first = write_synthetic(fmt, tmp_path / "a", **SIZES, **options)
    again = write_synthetic(fmt, tmp_path / "b", **SIZES, **options)
    other = write_synthetic(fmt, tmp_path / "c", **SIZES, seed=DEFAULT_SEED + 1, **options)
    assert _bytes(first) == _bytes(again)
    assert _bytes(first) != _bytes(other)
    assert not list((tmp_path / "a").glob(".*tmp"))  # temp files renamed away


def test_log_sizes_popularity_and_times() -> None:
    rng = np.random.default_rng(DEFAULT_SEED)
    log = generate_log(2000, 500, 30000, rng, PERIODS["amazon2018"])
    assert len(log.user) == 30000
    assert np.unique(log.user).size == 2000 and np.unique(log.item).size == 500
    assert np.bincount(log.user).min() >= 5
    counts = np.sort(np.bincount(log.item))[::-1]
    assert counts[0] > 20 * np.median(counts)  # power-law head
    assert counts[:50].sum() > 0.4 * counts.sum()
    lo = int(pd.Timestamp(PERIODS["amazon2018"][0], tz="UTC").timestamp())
    hi = int(pd.Timestamp(PERIODS["amazon2018"][1], tz="UTC").timestamp())
    assert log.time.min() >= lo and log.time.max() < hi
    assert np.all(log.time % 86400 == 0)
    same_user = log.user[1:] == log.user[:-1]
    assert np.all(np.diff(log.time)[same_user] >= 0)  # each user's times are sorted


def test_amazon2018_output_parses(tmp_path: Path) -> None:
    paths = write_synthetic("amazon2018", tmp_path, **SIZES, gz=True, reviews=True,
                            name="Office")
    data = read_raw("amazon2018", ratings=paths["ratings"], meta=paths["meta"])
    assert data.name == "Office"
    inter = data.interactions
    assert len(inter) == 600 and inter["user"].nunique() == 60 and inter["item"].nunique() == 40
    assert data.items is not None and 0 < len(data.items) <= 40
    assert set(data.items["item"]) <= set(inter["item"])
    row = data.items.iloc[0]
    assert row["categories"][0] == "Office" and "&amp;" not in row["text"]
    assert row["text"].endswith(".") and len(row["categories"]) == 3
    reviews = read_raw("amazon2018", reviews=paths["reviews"]).interactions
    key = ["user", "item", "timestamp"]
    pd.testing.assert_frame_equal(reviews.sort_values(key).reset_index(drop=True),
                                  inter.sort_values(key).reset_index(drop=True))


def test_amazon2014_output_parses(tmp_path: Path) -> None:
    paths = write_synthetic("amazon2014", tmp_path, **SIZES)
    assert paths["meta"].name == "meta_Beauty.json.gz"
    data = read_raw("amazon2014", **paths)
    assert len(data.interactions) == 600 and data.interactions["item"].nunique() == 40
    assert data.items["image"].str.startswith("http://ecx.images-amazon.com/").all()
    assert (data.items["categories"].map(lambda c: c[0]) == "Beauty").all()


def test_online_retail_output_parses(tmp_path: Path) -> None:
    path = write_synthetic("online_retail", tmp_path, users=80, items=50, interactions=2000)
    raw = pd.read_csv(path["path"], dtype=str)
    cancelled = raw["InvoiceNo"].str.startswith("C")
    nonpositive = ~cancelled & (raw["Quantity"].astype(int) <= 0)
    assert cancelled.any() and nonpositive.any()
    data = read_raw("online_retail", **path)
    assert len(data.interactions) == 2000 - cancelled.sum() - nonpositive.sum()
    assert any(f"dropped {cancelled.sum():,} lines of cancelled" in n for n in data.notes)
    customers = read_raw("online_retail", **path, user_field="customer").interactions
    assert customers["user"].nunique() <= 80 and len(customers) < len(data.interactions)
    assert data.interactions["timestamp"].min() >= 1291161600  # 2010-12-01


def test_tmall_and_tafeng_output_parse(tmp_path: Path) -> None:
    tmall = write_synthetic("tmall", tmp_path, **SIZES)
    raw = pd.read_csv(tmall["path"])
    buys = read_raw("tmall", **tmall)
    assert len(buys.interactions) == int((raw["action_type"] == 2).sum()) > 0
    assert len(read_raw("tmall", **tmall, actions="all").interactions) == 600
    tafeng = write_synthetic("tafeng", tmp_path, **SIZES)
    data = read_raw("tafeng", **tafeng)
    assert len(data.interactions) == 600 and data.interactions["user"].str.len().eq(8).all()
    assert data.interactions["timestamp"].min() >= 973036800  # 2000-11-01


def test_cli_entry_point(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["--format", "amazon2018", "--users", "30", "--items", "20", "--interactions", "200",
          "--out", str(tmp_path), "--name", "Office"])
    assert (tmp_path / "Office.csv").read_text().count("\n") == 200
    assert (tmp_path / "meta_Office.json").is_file()
    assert "wrote amazon2018" in capsys.readouterr().out
