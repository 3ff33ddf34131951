"""Deterministic synthetic raw files in the publishers' exact formats, of any size.

For the format tests and for scale benchmarks (e.g. an Office-sized Amazon 2018 dataset:
``--users 100000 --items 26000 --interactions 800000``).  The embedded default dataset is
real MovieLens data (``movielens.py``); nothing here is used for training results.

The interaction log (:func:`generate_log`) has

* a power-law item popularity: item ``r``-th in popularity is drawn with probability
  ``∝ (r + 1) ** -alpha`` (``alpha = 1.0``, a Zipf law as in e-commerce logs), popularity
  ranks shuffled over item ids, and every item drawn at least once when
  ``interactions >= items``;
* a heavy-tailed user activity: every user gets ``min_per_user`` interactions (5, so the
  5-core keeps most of them) and the rest is shared out in proportion to log-normal weights;
* realistic times: each user starts at a uniform time of the format's period and spreads
  exponential gaps over a uniform fraction of what is left of it; formats with dates only
  (Amazon, Tmall, Tafeng) are floored to days.

Everything is drawn from one ``numpy.random.default_rng(seed)``, :data:`DEFAULT_SEED` unless
given, vectorised (no per-interaction Python loop), and files are written through a temporary
file + ``os.replace``; gzip files carry no time stamp, so the same seed gives byte-identical
files.

CLI::

    python -m datamodules.synthetic --format amazon2018 --users 100000 --items 26000 \\
        --interactions 800000 --out /tmp/office [--gzip] [--seed 20240601] [--name Office]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from zoo.runfiles import atomic_write

#: the documented default seed of every generator in this module
DEFAULT_SEED = 20240601
SYNTHETIC_FORMATS = ("amazon2018", "amazon2014", "online_retail", "tmall", "tafeng")
DAY = 86400

# period each format's publisher covers (UTC)
PERIODS = {
    "amazon2018": ("2010-01-01", "2018-10-01"),
    "amazon2014": ("2008-01-01", "2014-07-23"),
    "online_retail": ("2010-12-01 08:00", "2011-12-09 20:00"),
    "tmall": ("2014-05-11", "2014-11-12"),
    "tafeng": ("2000-11-01", "2001-03-01"),
}

_ADJECTIVES = np.array(
    "classic compact deluxe durable ergonomic heavy-duty large lightweight mini modern "
    "portable premium professional recycled refillable slim smart soft sturdy vintage "
    "waterproof wireless adjustable assorted bright colourful elegant foldable glossy matte".split()
)
_NOUNS = np.array(
    "binder calculator clipboard desk-lamp envelope eraser folder highlighter journal label "
    "marker notebook organizer paper pen pencil planner printer-ink ruler scissors shredder "
    "stapler sticky-notes tape toner whiteboard backpack mug candle lantern brush lotion "
    "serum shampoo mascara cleanser".split()
)
_COLOURS = np.array("black blue green red white silver pink purple yellow grey".split())
_BRAND_STEMS = np.array(
    "acme apex bolt crest delta ember fable globe harbor iris jolt kite lumen metro nova "
    "orbit pixel quill ridge sol terra umbra vivid willow xeno yarrow zenith".split()
)
_LEVEL2 = np.array([
    "Office & School Supplies", "Office Electronics", "Office Furniture & Lighting",
    "Paper", "Writing & Correction Supplies", "Desk Accessories & Workspace Organizers",
    "Education & Crafts", "Filing Products", "Labels, Indexes & Stamps", "Presentation Boards",
])
_LEVEL3 = np.array([
    "Pens", "Pencils", "Markers", "Notebooks", "Binders", "Staplers", "Calculators",
    "Printers", "Lamps", "Chairs", "Organizers", "Tape",
])
_COUNTRIES = np.array(["United Kingdom"] * 9 + ["Germany", "France", "EIRE", "Spain"])
_AGE_GROUPS = np.array(["<25", "25-29", "30-34", "35-39", "40-44", "45-49", "50-54",
                        "55-59", "60-64", ">65"])


@dataclass
class SyntheticLog:
    """An interaction log, sorted by user then time.

    Attributes:
        user: ``[M]`` user index in ``0..users-1``.
        item: ``[M]`` item index in ``0..items-1``.
        time: ``[M]`` epoch seconds.
        users, items: the population sizes.
    """

    user: np.ndarray
    item: np.ndarray
    time: np.ndarray
    users: int
    items: int


def _seconds(stamp: str) -> int:
    return int(pd.Timestamp(stamp, tz="UTC").timestamp())


def generate_log(
    users: int,
    items: int,
    interactions: int,
    rng: np.random.Generator,
    period: tuple[str, str] = PERIODS["amazon2018"],
    alpha: float = 1.0,
    min_per_user: int = 5,
    day_resolution: bool = True,
) -> SyntheticLog:
    """Draw the log (see module docstring); vectorised over interactions."""
    if users < 1 or items < 1 or interactions < users:
        raise ValueError(f"need users >= 1, items >= 1 and interactions >= users, got "
                         f"users={users}, items={items}, interactions={interactions}")
    base = min(min_per_user, interactions // users)
    weights = rng.lognormal(0.0, 1.0, size=users)
    counts = base + rng.multinomial(interactions - base * users, weights / weights.sum())
    user = np.repeat(np.arange(users), counts)  # [M], grouped by user

    rank = np.arange(items, dtype=np.float64)
    popularity = (rank + 1.0) ** -alpha
    popularity /= popularity.sum()
    item_of_rank = rng.permutation(items)
    item = item_of_rank[rng.choice(items, size=interactions, p=popularity)]
    if interactions >= items:  # every item occurs at least once
        slots = rng.choice(interactions, size=items, replace=False)
        item[slots] = rng.permutation(items)

    t0, t1 = _seconds(period[0]), _seconds(period[1])
    start = t0 + rng.uniform(0.0, 0.8, size=users) * (t1 - t0)  # [U]
    span = rng.uniform(0.05, 1.0, size=users) * (t1 - start)  # [U]
    gaps = rng.exponential(1.0, size=interactions)
    offsets = np.concatenate([[0], np.cumsum(counts)])[:-1]
    gaps[offsets[counts > 0]] = 0.0  # each user's first interaction at its start
    cum = np.cumsum(gaps)
    cum -= np.repeat(cum[offsets], counts)  # cumulative gap within each user
    total = np.repeat(np.maximum(cum[np.minimum(offsets + counts - 1, interactions - 1)], 1e-9),
                      counts)
    seconds = np.repeat(start, counts) + cum / total * np.repeat(span, counts)
    seconds = np.minimum(seconds, t1 - 1).astype(np.int64)
    if day_resolution:
        seconds -= seconds % DAY
    return SyntheticLog(user=user, item=item, time=seconds, users=users, items=items)


# ----------------------------------------------------------------------------- item texts


def _item_words(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Titles, brands, category paths (as index arrays) for ``n`` items."""
    brand_id = rng.integers(0, len(_BRAND_STEMS) * 4, size=n)
    brand = np.char.add(
        np.char.capitalize(_BRAND_STEMS[brand_id % len(_BRAND_STEMS)]),
        np.array(["", " Co", " Labs", " Works"])[brand_id // len(_BRAND_STEMS)],
    )
    title = pd.Series(brand, dtype=object) + " " + pd.Series(
        _ADJECTIVES[rng.integers(0, len(_ADJECTIVES), n)], dtype=object).str.capitalize() \
        + " " + _NOUNS[rng.integers(0, len(_NOUNS), n)] + ", " \
        + _COLOURS[rng.integers(0, len(_COLOURS), n)] + ", " \
        + pd.Series(rng.integers(1, 500, n)).astype(str) + " pack"
    return {
        "title": title.to_numpy(dtype=object),
        "brand": brand.astype(object),
        "level2": rng.integers(0, len(_LEVEL2), n),
        "level3": rng.integers(0, len(_LEVEL3), n),
    }


def _ids(prefix: str, index: np.ndarray, width: int) -> np.ndarray:
    """``prefix`` + zero-padded decimal ids, vectorised."""
    return (prefix + pd.Series(index).astype(str).str.zfill(width)).to_numpy(dtype=object)


# ----------------------------------------------------------------------------- writing


def _write(path: Path, text: str, gz: bool = False) -> Path:
    """Write (optionally gzip with mtime 0, so reproducible) via temp file + os.replace."""
    data = text.encode("utf-8")
    if gz:
        buffer = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0,
                           compresslevel=6) as fh:
            fh.write(data)
        data = buffer.getvalue()
    atomic_write(path, data)
    return path


def _ratings(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.choice(np.array([1.0, 2.0, 3.0, 4.0, 5.0]), size=n,
                      p=[0.05, 0.05, 0.1, 0.2, 0.6])


def write_amazon2018(
    out: Path, users: int, items: int, interactions: int, seed: int = DEFAULT_SEED,
    name: str = "Office_Products", gz: bool = False, reviews: bool = False,
    meta_coverage: float = 0.97,
) -> dict[str, Path]:
    """``<name>.csv`` (item,user,rating,timestamp; no header, lines grouped by item as the
    published files) + ``meta_<name>.json[.gz]``; with ``reviews=True`` also the 5-core
    style ``<name>_5.json[.gz]``.  ``meta_coverage`` of the items have a metadata line."""
    rng = np.random.default_rng(seed)
    log = generate_log(users, items, interactions, rng, PERIODS["amazon2018"])
    asin = _ids("B", rng.choice(max(10**8, items), size=items, replace=False), 9)
    reviewer = _ids("A", rng.choice(max(users * 3, 10**6), size=users, replace=False), 12)
    order = np.lexsort((log.time, log.item))  # published ratings files are grouped by item
    rating = _ratings(rng, interactions)
    frame = pd.DataFrame({"item": asin[log.item[order]], "user": reviewer[log.user[order]],
                          "rating": rating[order], "timestamp": log.time[order]})
    paths = {"ratings": _write(out / f"{name}.csv", frame.to_csv(header=False, index=False))}
    if reviews:
        review = pd.DataFrame({
            "overall": rating, "verified": True,
            "reviewTime": pd.to_datetime(log.time, unit="s").strftime("%m %d, %Y"),
            "reviewerID": reviewer[log.user], "asin": asin[log.item],
            "reviewText": "Synthetic review text.", "summary": "Synthetic",
            "unixReviewTime": log.time,
        })
        suffix = ".json.gz" if gz else ".json"
        paths["reviews"] = _write(out / f"{name}_5{suffix}",
                                  review.to_json(orient="records", lines=True), gz)
    words = _item_words(rng, items)
    top = name.replace("_", " ")
    # the 2018 files write '&' in categories as '&amp;'
    level2 = pd.Series(_LEVEL2[words["level2"]], dtype=object).str.replace("&", "&amp;")
    categories = [[top, a, b] for a, b in zip(level2, _LEVEL3[words["level3"]].tolist())]
    meta = pd.DataFrame({
        "category": categories,
        "description": [[d] for d in words["title"]],
        "title": words["title"],
        "brand": words["brand"],
        "main_cat": top,
        "asin": asin,
    })
    has_meta = rng.random(items) < meta_coverage
    text = meta.loc[has_meta].to_json(orient="records", lines=True)
    paths["meta"] = _write(out / f"meta_{name}.json{'.gz' if gz else ''}", text, gz)
    return paths


def write_amazon2014(
    out: Path, users: int, items: int, interactions: int, seed: int = DEFAULT_SEED,
    name: str = "Beauty", meta_coverage: float = 0.97,
) -> dict[str, Path]:
    """``reviews_<name>_5.json.gz`` (JSON lines, as the 5-core files) and
    ``meta_<name>.json.gz`` whose lines are Python dict literals (``imUrl``, nested
    ``categories``, ``related``, some titles with apostrophes → double-quoted)."""
    rng = np.random.default_rng(seed)
    log = generate_log(users, items, interactions, rng, PERIODS["amazon2014"])
    asin = _ids("B00", rng.choice(max(10**7, items), size=items, replace=False), 7)
    reviewer = _ids("A", rng.choice(max(users * 3, 10**6), size=users, replace=False), 13)
    review = pd.DataFrame({
        "reviewerID": reviewer[log.user], "asin": asin[log.item],
        "reviewerName": "Reviewer", "helpful": [[0, 0]] * interactions,
        "reviewText": "Synthetic review text.", "overall": _ratings(rng, interactions),
        "summary": "Synthetic",
        "unixReviewTime": log.time,
        "reviewTime": pd.to_datetime(log.time, unit="s").strftime("%m %d, %Y"),
    })
    paths = {"reviews": _write(out / f"reviews_{name}_5.json.gz",
                               review.to_json(orient="records", lines=True), gz=True)}
    words = _item_words(rng, items)
    title = pd.Series(words["title"], dtype=object)
    apostrophe = rng.random(items) < 0.1
    title[apostrophe] = title[apostrophe].str.replace(" ", "'s ", n=1)
    paths_cat = [
        [[name, a, b], [name, a]]
        for a, b in zip(_LEVEL2[words["level2"]].tolist(), _LEVEL3[words["level3"]].tolist())
    ]
    also = asin[rng.integers(0, items, size=items)]
    line = ("{'asin': " + pd.Series(asin).map(repr)
            + ", 'imUrl': " + ("'http://ecx.images-amazon.com/images/I/" + pd.Series(asin)
                               + ".jpg'")
            + ", 'related': {'also_bought': [" + pd.Series(also).map(repr) + "]}"
            + ", 'title': " + title.map(repr)
            + ", 'price': " + pd.Series(np.round(rng.uniform(1, 100, items), 2)).astype(str)
            + ", 'salesRank': {" + repr(name) + ": "
            + pd.Series(rng.integers(1, 10**6, items)).astype(str) + "}"
            + ", 'brand': " + pd.Series(words["brand"]).map(repr)
            + ", 'categories': " + pd.Series(paths_cat, dtype=object).map(repr) + "}")
    has_meta = rng.random(items) < meta_coverage
    paths["meta"] = _write(out / f"meta_{name}.json.gz",
                           "\n".join(line[has_meta].to_list()) + "\n", gz=True)
    return paths


def write_online_retail(
    out: Path, users: int, items: int, interactions: int, seed: int = DEFAULT_SEED,
    name: str = "Online Retail", basket: float = 5.0, cancel_rate: float = 0.02,
    nonpositive_rate: float = 0.005, missing_customer: float = 0.25,
) -> dict[str, Path]:
    """The UCI CSV export: ``users`` customers whose lines group into invoices of mean size
    ``basket`` (same minute); ``cancel_rate`` of invoices are ``C…`` cancellations with
    negative quantities; ``nonpositive_rate`` of other lines have Quantity <= 0;
    ``missing_customer`` of invoices have no CustomerID (written ``17850.0`` otherwise, as
    Excel exports it)."""
    rng = np.random.default_rng(seed)
    log = generate_log(users, items, interactions, rng, PERIODS["online_retail"],
                       day_resolution=False)
    new_user = np.r_[True, log.user[1:] != log.user[:-1]]
    new_invoice = new_user | (rng.random(interactions) < 1.0 / basket)
    invoice = np.cumsum(new_invoice) - 1  # [M] invoice index
    n_invoices = int(invoice[-1]) + 1
    first_line = np.flatnonzero(new_invoice)
    minute = log.time - log.time % 60
    when = minute[first_line][invoice]  # an invoice's lines share its minute
    number_of = np.empty(n_invoices, dtype=np.int64)  # invoice numbers increase with time
    number_of[np.argsort(minute[first_line], kind="stable")] = 536365 + np.arange(n_invoices)
    cancelled = (rng.random(n_invoices) < cancel_rate)[invoice]
    invoice_no = pd.Series(number_of[invoice]).astype(str)
    invoice_no[cancelled] = "C" + invoice_no[cancelled]
    quantity = rng.geometric(0.3, size=interactions)
    quantity[cancelled] *= -1
    odd = ~cancelled & (rng.random(interactions) < nonpositive_rate)
    quantity[odd] = -rng.integers(0, 5, size=int(odd.sum()))
    stock = pd.Series(10000 + rng.choice(max(90000, items), size=items, replace=False)).astype(str)
    lettered = rng.random(items) < 0.2
    letters = np.array(list("ABCDEFGHJK"))[rng.integers(0, 10, int(lettered.sum()))]
    stock[lettered] = stock[lettered] + letters
    words = _item_words(rng, items)
    description = pd.Series(words["title"], dtype=object).str.upper()
    customer = (12346 + rng.choice(max(users * 2, 10000), size=users, replace=False)).astype(str)
    customer_col = pd.Series(customer[log.user], dtype=object) + ".0"
    no_customer = (rng.random(n_invoices) < missing_customer)[invoice]
    customer_col[no_customer] = ""
    dates = pd.to_datetime(when, unit="s")
    date_text = (pd.Series(dates.month).astype(str) + "/" + pd.Series(dates.day).astype(str)
                 + "/" + pd.Series(dates.year).astype(str) + " "
                 + pd.Series(dates.hour).astype(str) + ":"
                 + pd.Series(dates.minute).astype(str).str.zfill(2))
    order = np.lexsort((np.arange(interactions), number_of[invoice]))
    frame = pd.DataFrame({
        "InvoiceNo": invoice_no, "StockCode": stock.to_numpy()[log.item],
        "Description": description.to_numpy()[log.item], "Quantity": quantity,
        "InvoiceDate": date_text, "UnitPrice": np.round(rng.uniform(0.1, 20, interactions), 2),
        "CustomerID": customer_col,
        "Country": _COUNTRIES[rng.integers(0, len(_COUNTRIES), interactions)],
    }).iloc[order]
    return {"path": _write(out / f"{name}.csv", frame.to_csv(index=False))}


def write_tmall(
    out: Path, users: int, items: int, interactions: int, seed: int = DEFAULT_SEED,
    name: str = "user_log_format1", action_p: tuple[float, float, float, float] = (
        0.80, 0.02, 0.10, 0.08),
) -> dict[str, Path]:
    """IJCAI-15 ``user_log_format1.csv``: MMDD dates of 2014 (0511..1111), ``action_type``
    drawn with probabilities ``action_p`` (click, cart, buy, favourite), one cat/seller/brand
    per item (about 1% of brands missing, as in the real file)."""
    rng = np.random.default_rng(seed)
    log = generate_log(users, items, interactions, rng, PERIODS["tmall"])
    dates = pd.to_datetime(log.time, unit="s")
    mmdd = np.asarray(dates.month) * 100 + np.asarray(dates.day)
    user_id = 1 + rng.choice(max(users * 2, 1000), size=users, replace=False)
    item_id = 1 + rng.choice(max(items * 2, 1000), size=items, replace=False)
    cat = rng.integers(1, max(items // 50, 2) + 1, size=items)
    seller = rng.integers(1, max(items // 20, 2) + 1, size=items)
    brand = pd.Series(rng.integers(1, max(items // 10, 2) + 1, size=items)).astype(str)
    brand[rng.random(items) < 0.01] = ""
    frame = pd.DataFrame({
        "user_id": user_id[log.user], "item_id": item_id[log.item], "cat_id": cat[log.item],
        "seller_id": seller[log.item], "brand_id": brand.to_numpy()[log.item],
        "time_stamp": mmdd,
        "action_type": rng.choice(4, size=interactions, p=np.asarray(action_p) / sum(action_p)),
    })
    return {"path": _write(out / f"{name}.csv", frame.to_csv(index=False))}


def write_tafeng(
    out: Path, users: int, items: int, interactions: int, seed: int = DEFAULT_SEED,
    name: str = "ta_feng_all_months_merged",
) -> dict[str, Path]:
    """The Kaggle Ta-Feng CSV: every field quoted, dates ``11/1/2000`` (Nov 2000–Feb 2001),
    8-digit customer ids with leading zeros, 13-digit product ids, 6-digit subclasses."""
    rng = np.random.default_rng(seed)
    log = generate_log(users, items, interactions, rng, PERIODS["tafeng"])
    dates = pd.to_datetime(log.time, unit="s")
    date_text = (pd.Series(dates.month).astype(str) + "/" + pd.Series(dates.day).astype(str)
                 + "/" + pd.Series(dates.year).astype(str))
    customer = _ids("", rng.choice(max(users * 3, 10**6), size=users, replace=False), 8)
    product = _ids("4710", rng.choice(max(items * 3, 10**6), size=items, replace=False), 9)
    subclass = (100000 + rng.integers(0, max(items // 30, 2), size=items) * 7).astype(str)
    frame = pd.DataFrame({
        "TRANSACTION_DT": date_text, "CUSTOMER_ID": customer[log.user],
        "AGE_GROUP": _AGE_GROUPS[rng.integers(0, len(_AGE_GROUPS), users)][log.user],
        "PIN_CODE": np.array(["105", "106", "110", "114", "115", "221"])[
            rng.integers(0, 6, users)][log.user],
        "PRODUCT_SUBCLASS": subclass[log.item], "PRODUCT_ID": product[log.item],
        "AMOUNT": rng.geometric(0.6, size=interactions),
        "ASSET": rng.integers(5, 500, size=interactions),
        "SALES_PRICE": rng.integers(5, 600, size=interactions),
    })
    return {"path": _write(out / f"{name}.csv",
                           frame.to_csv(index=False, quoting=csv.QUOTE_ALL))}


WRITERS = {
    "amazon2018": write_amazon2018,
    "amazon2014": write_amazon2014,
    "online_retail": write_online_retail,
    "tmall": write_tmall,
    "tafeng": write_tafeng,
}


def write_synthetic(
    format: str, out_dir: str | Path, users: int, items: int, interactions: int,
    seed: int = DEFAULT_SEED, name: str | None = None, **options: object,
) -> dict[str, Path]:
    """Write synthetic raw files of ``format``; return the paths as ``read_raw`` keywords
    (e.g. ``{"ratings": ..., "meta": ...}``), so ``read_raw(format, **paths)`` reads them."""
    if format not in WRITERS:
        raise ValueError(f"no synthetic writer for {format!r}; choose from {SYNTHETIC_FORMATS}")
    kwargs = dict(options)
    if name is not None:
        kwargs["name"] = name
    return WRITERS[format](Path(out_dir), users, items, interactions, seed=seed, **kwargs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m datamodules.synthetic",
        description="Write deterministic synthetic raw files in a publisher's exact format.",
    )
    parser.add_argument("--format", required=True, choices=SYNTHETIC_FORMATS)
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--items", type=int, required=True)
    parser.add_argument("--interactions", type=int, required=True)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--name", default=None, help="dataset/category name in file names")
    parser.add_argument("--gzip", action="store_true",
                        help="amazon2018: write meta (and reviews) as .json.gz")
    parser.add_argument("--reviews", action="store_true",
                        help="amazon2018: also write 5-core style review JSON lines")
    args = parser.parse_args(argv)
    options: dict[str, object] = {}
    if args.format == "amazon2018":
        options = {"gz": args.gzip, "reviews": args.reviews}
    start = time.perf_counter()
    paths = write_synthetic(args.format, args.out, args.users, args.items, args.interactions,
                            seed=args.seed, name=args.name, **options)
    for key, path in paths.items():
        print(f"{key}: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    print(f"wrote {args.format} ({args.interactions:,} interactions) in "
          f"{time.perf_counter() - start:.1f} s, seed {args.seed}")


if __name__ == "__main__":
    main()
