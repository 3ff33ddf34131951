"""Tmall (HPCL4SR "Tmall-Buy"): the IJCAI-15 repeat-buyers ``user_log_format1.csv``.

Header ``user_id,item_id,cat_id,seller_id,brand_id,time_stamp,action_type``
(https://tianchi.aliyun.com/dataset/42).  ``time_stamp`` is ``MMDD`` (e.g. ``1111`` =
11 November) of one year that the file does not state: the logs cover the six months up to
"Double 11" 2014, so :data:`DEFAULT_YEAR` is 2014 (option ``year``); each date becomes its
00:00 UTC epoch seconds and ``time_unit = 86400``.  ``action_type`` is 0 click, 1 add to cart,
2 buy, 3 add to favourites; HPCL4SR keeps purchases, so ``actions=(2,)`` by default (pass
``actions=(0, 1, 2, 3)`` or ``"all"`` to keep more).  An item's category is its ``cat_id``;
there is no item text.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from datamodules.raw import DataFormatError, RawDataset
from datamodules.rawio import category_items, make_dataset, read_csv_checked

DEFAULT_YEAR = 2014
ACTION_NAMES = {0: "click", 1: "cart", 2: "buy", 3: "favourite"}
COLUMNS = {"user_id": "int64", "item_id": "int64", "cat_id": "int64",
           "time_stamp": "int64", "action_type": "int64"}
EXPECTED = "user_id,item_id,cat_id,seller_id,brand_id,time_stamp,action_type"


def mmdd_to_seconds(mmdd: np.ndarray, year: int) -> tuple[np.ndarray, np.ndarray]:
    """``MMDD`` integers → (epoch seconds at 00:00 UTC, mask of invalid dates)."""
    month = mmdd // 100
    day = mmdd % 100
    valid_month = (month >= 1) & (month <= 12)
    month0 = np.where(valid_month, month - 1, 0)
    start = np.datetime64(f"{year:04d}-01", "M") + month0.astype("timedelta64[M]")  # month starts
    date = start.astype("datetime64[D]") + (day - 1).astype("timedelta64[D]")
    same_month = date.astype("datetime64[M]") == start
    invalid = ~valid_month | (day < 1) | ~same_month
    seconds = (date - np.datetime64(0, "D")).astype(np.int64) * 86400
    return seconds, invalid


def read_tmall(
    path: str | Path,
    actions: Sequence[int] | str = (2,),
    year: int = DEFAULT_YEAR,
    name: str | None = None,
) -> RawDataset:
    """Read ``user_log_format1.csv``, keeping the ``actions`` (default: buys only)."""
    path = Path(path)
    wanted = sorted(ACTION_NAMES) if actions == "all" else sorted({int(a) for a in actions})
    if not wanted or any(a not in ACTION_NAMES for a in wanted):
        raise ValueError(f"actions must be a non-empty subset of {sorted(ACTION_NAMES)} or 'all', "
                         f"got {actions!r}")
    frame = read_csv_checked(path, dtypes=COLUMNS, expected=EXPECTED)
    action = frame["action_type"].to_numpy()
    unknown = ~np.isin(action, list(ACTION_NAMES))
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        raise DataFormatError(path, "action_type in 0..3 (click, cart, buy, favourite)",
                              line=int(frame.index[row]), content=str(action[row]))
    seconds, invalid = mmdd_to_seconds(frame["time_stamp"].to_numpy(), year)
    if invalid.any():
        row = int(np.flatnonzero(invalid)[0])
        raise DataFormatError(path, f"time_stamp as MMDD, a date of {year}",
                              line=int(frame.index[row]),
                              content=str(frame["time_stamp"].iloc[row]))
    keep = np.isin(action, wanted)
    counts = np.bincount(action, minlength=4)
    kept_names = "+".join(ACTION_NAMES[a] for a in wanted)
    notes = [
        "Tmall: action counts "
        + ", ".join(f"{ACTION_NAMES[a]} {counts[a]:,}" for a in ACTION_NAMES),
        f"Tmall: kept action_type {wanted} ({kept_names}): "
        f"{int(keep.sum()):,} of {len(keep):,} lines",
        f"Tmall: time_stamp MMDD read as dates of {year} (00:00 UTC)",
    ]
    if not keep.any():
        raise DataFormatError(path, f"at least one line with action_type in {wanted}")
    user = frame["user_id"].to_numpy()[keep]
    item = frame["item_id"].to_numpy()[keep]
    items = category_items(item.astype(str), frame["cat_id"].to_numpy()[keep])
    return make_dataset(
        name or "Tmall", user, item, seconds[keep], items=items, sources=[path],
        time_unit=86400, notes=notes,
    )
