"""Ta-Feng grocery (HPCL4SR): the Kaggle ``ta_feng_all_months_merged.csv``.

Header ``TRANSACTION_DT,CUSTOMER_ID,AGE_GROUP,PIN_CODE,PRODUCT_SUBCLASS,PRODUCT_ID,AMOUNT,
ASSET,SALES_PRICE``, every field quoted, dates as ``11/1/2000`` (month/day/year, no zero
padding).  Other exports write ``2000-11-01`` or ``2000-11-01 00:00:00``; the first of
:data:`DATE_FORMATS` that parses every line is used unless ``date_format`` is given.  Dates
become 00:00 UTC epoch seconds (``time_unit = 86400``).  User = CUSTOMER_ID, item =
PRODUCT_ID, category = PRODUCT_SUBCLASS (the first seen for a product); no item text.
Ids are kept as text (``"01104905"`` keeps its leading zero).
"""

from __future__ import annotations

from pathlib import Path

from datamodules.raw import RawDataset
from datamodules.rawio import category_items, dates_to_seconds, make_dataset, read_csv_checked

COLUMNS = {"TRANSACTION_DT": "str", "CUSTOMER_ID": "str", "PRODUCT_SUBCLASS": "str",
           "PRODUCT_ID": "str"}
EXPECTED = ("TRANSACTION_DT,CUSTOMER_ID,AGE_GROUP,PIN_CODE,PRODUCT_SUBCLASS,PRODUCT_ID,"
            "AMOUNT,ASSET,SALES_PRICE")
DATE_FORMATS = ("%m/%d/%Y", "%Y-%m-%d", "%Y-%m-%d %H:%M:%S", "%d/%m/%Y")


def read_tafeng(
    path: str | Path, date_format: str | None = None, name: str | None = None
) -> RawDataset:
    """Read the Ta-Feng CSV (see module docstring)."""
    path = Path(path)
    frame = read_csv_checked(path, dtypes=COLUMNS, expected=EXPECTED)
    formats = (date_format,) if date_format else DATE_FORMATS
    seconds, used = dates_to_seconds(frame["TRANSACTION_DT"], formats, path, "TRANSACTION_DT")
    user = frame["CUSTOMER_ID"].str.strip().to_numpy(dtype=object)
    item = frame["PRODUCT_ID"].str.strip().to_numpy(dtype=object)
    category = frame["PRODUCT_SUBCLASS"].str.strip().to_numpy(dtype=object)
    notes = [f"Tafeng: {len(frame):,} transaction lines, TRANSACTION_DT parsed as {used!r} (UTC)"]
    return make_dataset(
        name or "Tafeng", user, item, seconds, items=category_items(item, category),
        sources=[path], time_unit=86400, notes=notes,
    )
