"""UCI Online Retail (MIRACLE, HORAE): the ``Online Retail.xlsx`` sheet or its CSV export.

Columns ``InvoiceNo, StockCode, Description, Quantity, InvoiceDate, UnitPrice, CustomerID,
Country`` (https://archive.ics.uci.edu/dataset/352/online+retail).

* **User.** ``user_field="invoice"`` (default): each InvoiceNo is a "user" (one basket);
  the papers' published Online Retail counts come from this reading.  ``"customer"``: the
  CustomerID is the user and lines without one are dropped (the count goes into ``notes``).
* **Item** = StockCode; its text is its Description (the most frequent one when a code has
  several; ties go to the first seen), no categories.
* **Dropped:** cancelled invoices (InvoiceNo starting with ``C``) and lines with a
  non-positive Quantity; how many of each is written to ``notes``.
* **Time:** InvoiceDate has minute resolution and no time zone: it is read as UTC
  (``time_unit = 60``).  CSV exports write it in different ways; the first of
  :data:`DATE_FORMATS` that parses every line is used (US month/day first, as the UCI sheet
  exported by Excel and the common Kaggle copy) unless ``date_format`` is given.

An ``.xlsx`` needs ``openpyxl`` (not a zoo dependency); without it the reader says to install
it or to export the sheet as CSV.  A CSV in latin-1 (the Kaggle copy) is decoded as such when
it is not valid UTF-8.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from datamodules.raw import DataFormatError, RawDataset
from datamodules.rawio import (
    compose_text,
    dates_to_seconds,
    decode,
    make_dataset,
    read_bytes,
    read_csv_checked,
)

COLUMNS = {
    "InvoiceNo": "str",
    "StockCode": "str",
    "Description": "str",
    "Quantity": "int64",
    "InvoiceDate": "str",
    "CustomerID": "str",
}
REQUIRED = ("InvoiceNo", "StockCode", "Quantity", "InvoiceDate")
EXPECTED = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country"
DATE_FORMATS = (
    "%m/%d/%Y %H:%M",  # 12/1/2010 8:26 (Excel US export, Kaggle copy)
    "%Y-%m-%d %H:%M:%S",  # 2010-12-01 08:26:00 (pandas / ISO export)
    "%Y-%m-%d %H:%M",
    "%d/%m/%Y %H:%M",  # 01/12/2010 08:26 (Excel UK export)
    "%d-%m-%Y %H:%M",
    "%m/%d/%Y %H:%M:%S",
    "%d/%m/%Y %H:%M:%S",
)
UserField = Literal["invoice", "customer"]


def read_online_retail(
    path: str | Path,
    user_field: UserField = "invoice",
    date_format: str | None = None,
    encoding: str | None = None,
    name: str | None = None,
) -> RawDataset:
    """Read the Online Retail sheet (``.xlsx``) or its CSV export.

    Args:
        path: ``Online Retail.xlsx`` or a CSV export with the UCI header.
        user_field: ``"invoice"`` (each basket is a user; default) or ``"customer"``.
        date_format: a ``strftime`` format for InvoiceDate (default: detect, see module doc).
        encoding: CSV encoding (default: UTF-8, falling back to latin-1).
        name: dataset name (default ``"OnlineRetail"``).
    """
    if user_field not in ("invoice", "customer"):
        raise ValueError(f"user_field must be 'invoice' or 'customer', got {user_field!r}")
    path = Path(path)
    if path.suffix.lower() in (".xlsx", ".xls"):
        frame, seconds = _read_excel(path)
    else:
        data = read_bytes(path)
        frame = read_csv_checked(
            path, dtypes=COLUMNS, required=REQUIRED, expected=EXPECTED,
            source=io.StringIO(decode(data, path, encoding)),
        )
        formats = (date_format,) if date_format else DATE_FORMATS
        seconds, _ = dates_to_seconds(frame["InvoiceDate"], formats, path, "InvoiceDate")
    notes: list[str] = []
    invoice = frame["InvoiceNo"].str.strip().to_numpy(dtype=object)
    quantity = frame["Quantity"].to_numpy(dtype=np.int64)
    cancelled = frame["InvoiceNo"].str.strip().str.upper().str.startswith("C").to_numpy()
    nonpositive = (quantity <= 0) & ~cancelled
    notes.append(
        f"Online Retail: dropped {int(cancelled.sum()):,} lines of cancelled (C...) invoices"
    )
    notes.append(f"Online Retail: dropped {int(nonpositive.sum()):,} lines with Quantity <= 0")
    keep = ~cancelled & ~nonpositive
    if user_field == "invoice":
        user = invoice
        notes.append("Online Retail: user = InvoiceNo (each basket is a user, as the papers)")
    else:
        customer = _customer_ids(frame["CustomerID"])
        no_customer = customer.isna().to_numpy() & keep
        notes.append(f"Online Retail: dropped {int(no_customer.sum()):,} lines without CustomerID")
        keep &= ~no_customer
        user = customer.to_numpy(dtype=object)
        notes.append("Online Retail: user = CustomerID")
    if not keep.any():
        raise DataFormatError(
            path, "at least one line left after dropping cancelled invoices, non-positive "
            f"quantities{' and lines without CustomerID' if user_field == 'customer' else ''}"
        )
    item = frame["StockCode"].str.strip().to_numpy(dtype=object)
    items = _item_texts(item[keep], frame["Description"].to_numpy(dtype=object)[keep])
    return make_dataset(
        name or "OnlineRetail", user[keep], item[keep], seconds[keep], items=items,
        sources=[path], time_unit=60, notes=notes,
    )


def _customer_ids(values: pd.Series) -> pd.Series:
    """``"17850.0"`` (Excel float export) and ``"17850"`` are the same customer."""
    text = values.astype(object).where(values.notna(), None)
    text = pd.Series(text, dtype="str").str.strip()
    return text.str.replace(r"\.0+$", "", regex=True).where(text.str.len() > 0)


def _item_texts(item: np.ndarray, description: np.ndarray) -> pd.DataFrame:
    """Each StockCode's most frequent Description (ties: first seen) as its text."""
    codes = pd.unique(item)
    lines = pd.DataFrame({"item": item, "desc": description, "order": np.arange(len(item))})
    lines = lines[lines["desc"].notna()]
    lines = lines.assign(desc=lines["desc"].astype(str).str.strip())
    lines = lines[lines["desc"].str.len() > 0]
    counts = lines.groupby(["item", "desc"], sort=False).agg(
        n=("order", "size"), first=("order", "min")
    ).reset_index()
    counts = counts.sort_values(
        ["item", "n", "first"], ascending=[True, False, True], kind="stable"
    )
    best = counts.drop_duplicates("item", keep="first").set_index("item")["desc"]
    description_of = best.reindex(codes)
    return pd.DataFrame(
        {
            "item": codes,
            "text": compose_text([description_of.reset_index(drop=True)]).to_numpy(),
            "categories": [[] for _ in range(len(codes))],
        }
    )


def _read_excel(path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """The UCI sheet through pandas + openpyxl; row numbers in errors are sheet rows."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        import openpyxl  # noqa: F401
    except ImportError:
        raise ImportError(
            f"{path}: reading .xlsx needs the 'openpyxl' package, which is not installed. "
            "Either `pip install openpyxl`, or open the sheet and save it as CSV "
            "(keeping the header row) and pass the .csv instead."
        ) from None
    try:
        sheet = pd.read_excel(path, dtype={"InvoiceNo": str, "StockCode": str, "CustomerID": str})
    except Exception as err:  # openpyxl raises several unrelated types for a bad workbook
        raise DataFormatError(path, f"an Excel workbook ({type(err).__name__}: {err})") from err
    for col in COLUMNS:
        if col not in sheet.columns:
            raise DataFormatError(path, f"a header naming column '{col}' ({EXPECTED})", line=1)
    sheet.index = pd.RangeIndex(2, 2 + len(sheet))  # sheet row numbers (row 1 = header)
    for col in REQUIRED:
        missing = sheet[col].isna().to_numpy()
        if missing.any():
            row = int(np.flatnonzero(missing)[0])
            raise DataFormatError(path, f"a value for '{col}'", line=int(sheet.index[row]))
    quantity = pd.to_numeric(sheet["Quantity"], errors="coerce")
    if quantity.isna().any():
        row = int(np.flatnonzero(quantity.isna().to_numpy())[0])
        raise DataFormatError(path, "an integer Quantity", line=int(sheet.index[row]),
                              content=str(sheet["Quantity"].iloc[row]))
    sheet["Quantity"] = quantity.astype("int64")
    sheet["InvoiceNo"] = sheet["InvoiceNo"].astype(str)
    sheet["StockCode"] = sheet["StockCode"].astype(str)
    dates = sheet["InvoiceDate"]
    if pd.api.types.is_datetime64_any_dtype(dates):
        seconds = (dates.to_numpy(dtype="datetime64[s]") - np.datetime64(0, "s")).astype(np.int64)
    else:
        seconds, _ = dates_to_seconds(dates.astype(str), DATE_FORMATS, path, "InvoiceDate")
    return sheet, seconds

