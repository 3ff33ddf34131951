"""Shared plumbing of the raw-format parsers (``amazon.py``, ``online_retail.py``, ...).

One place for what every parser needs:

* opening plain or gzip files, with a truncated/corrupt ``.gz`` and an empty file turned into a
  :class:`~datamodules.raw.DataFormatError` (never a bare ``gzip`` traceback);
* :func:`read_csv_checked`: ``pandas.read_csv`` with explicit dtypes whose every failure
  (wrong field count, a non-number, an empty required cell, a missing header column) names
  the file, the 1-based line and the offending content;
* :func:`read_json_lines` and :func:`read_literal_lines`: one JSON object / Python dict
  literal a line, parsed in bulk (pyarrow's JSON reader) or line by line (``ast.literal_eval``;
  never ``eval``), falling back to a per-line scan only to name a bad line;
* :func:`compose_text`: the UniSRec-style item text (strip HTML, collapse whitespace, end every
  field with one period, drop empty fields) shared by every format with text.

Line numbers assume one record per physical line, as every supported publisher writes them
(a quoted CSV field with an embedded newline would shift the numbers reported after it).
"""

from __future__ import annotations

import ast
import gzip
import html
import io
import json
import re
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from datamodules.raw import DataFormatError, RawDataset

GZIP_MAGIC = b"\x1f\x8b"
_GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)
_FIELDS_RE = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")

# ----------------------------------------------------------------------------- files


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return path


def is_gzip(path: str | Path) -> bool:
    """True when the file starts with the gzip magic bytes (whatever its suffix)."""
    with open(path, "rb") as fh:
        return fh.read(2) == GZIP_MAGIC


def open_binary(path: str | Path) -> IO[bytes]:
    """Open a plain or gzip file for binary reading (gzip detected by its magic bytes)."""
    path = _existing(path)
    if is_gzip(path):
        return gzip.open(path, "rb")
    if path.suffix == ".gz":
        with open(path, "rb") as fh:
            head = fh.read(40)
        raise DataFormatError(path, "a gzip file (first bytes 1f 8b)", content=repr(head))
    return open(path, "rb")


@contextmanager
def guard_gzip(path: str | Path) -> Iterator[None]:
    """Turn a truncated or corrupt gzip stream into a :class:`DataFormatError`."""
    try:
        yield
    except _GZIP_ERRORS as err:
        raise DataFormatError(
            path, f"a complete gzip stream, but the file is truncated or corrupt ({err})"
        ) from err


def read_bytes(path: str | Path) -> bytes:
    """The whole (decompressed) file; empty or whitespace-only files are an error."""
    path = _existing(path)
    with guard_gzip(path), open_binary(path) as fh:
        data = fh.read()
    if not data.strip():
        raise DataFormatError(path, "a non-empty file (the file has no data)")
    return data


def check_nonempty(path: str | Path) -> None:
    """Raise :class:`DataFormatError` when the (decompressed) file holds only whitespace."""
    with guard_gzip(path), open_binary(path) as fh:
        while chunk := fh.read(1 << 16):
            if chunk.strip():
                return
    raise DataFormatError(path, "a non-empty file (the file has no data)")


def line_at(path: str | Path, line: int, encoding: str = "utf-8") -> str:
    """The 1-based ``line`` of the file, for error messages only (re-reads the file)."""
    with guard_gzip(path), open_binary(path) as fh:
        for n, raw in enumerate(fh, start=1):
            if n == line:
                return raw.decode(encoding, errors="replace").rstrip("\r\n")
    return ""


def decode(data: bytes, path: str | Path, encoding: str | None) -> str:
    """Decode bytes; ``encoding=None`` tries UTF-8 then latin-1 (which never fails)."""
    if encoding is not None:
        try:
            return data.decode(encoding)
        except UnicodeDecodeError as err:
            line = data[: err.start].count(b"\n") + 1
            raise DataFormatError(path, f"{encoding}-encoded text", line=line) from err
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


# ----------------------------------------------------------------------------- CSV


def read_csv_checked(
    path: str | Path,
    *,
    dtypes: dict[str, str],
    expected: str,
    names: Sequence[str] | None = None,
    sep: str = ",",
    encoding: str | None = "utf-8",
    required: Sequence[str] | None = None,
    source: IO[bytes] | io.StringIO | None = None,
    quoting: int = 0,
) -> pd.DataFrame:
    """``pandas.read_csv`` whose every failure names the file, 1-based line and content.

    The returned frame's index holds the 1-based line number of each row (blank lines are
    skipped), so callers' later checks can name the line.

    Args:
        path: the file (plain or gzip); only used for messages when ``source`` is given.
        dtypes: column → dtype (``"str"``, ``"int64"``, ``"float64"``); only these columns
            are kept.  Numeric columns are parsed natively; on failure the columns are
            re-read as text to find the first bad cell.
        expected: what a line should look like, for messages (e.g. ``"item,user,rating,ts"``).
        names: column names of a header-less file (``None``: the first line is the header).
        required: columns that must be non-empty on every line (default: all of ``dtypes``).
        source: an already-decoded text buffer to parse instead of opening ``path``.
        quoting: ``csv.QUOTE_*`` constant passed to pandas.
    """
    path = Path(path)
    required = list(dtypes) if required is None else list(required)
    header_lines = 0 if names is not None else 1

    def _read(types: dict[str, str]) -> pd.DataFrame:
        kwargs: dict[str, Any] = dict(
            sep=sep,
            dtype=types,  # no usecols: with it pandas silently drops a line's extra fields
            skip_blank_lines=False,
            keep_default_na=False,
            na_values=[""],
            quoting=quoting,
        )
        if names is not None:
            kwargs.update(header=None, names=list(names))
        if source is not None:
            source.seek(0)
            return pd.read_csv(source, **kwargs)[list(dtypes)]
        with guard_gzip(path), open_binary(path) as fh:
            return pd.read_csv(fh, encoding=encoding or "utf-8", **kwargs)[list(dtypes)]

    if source is None:
        check_nonempty(path)
    if names is None:
        _check_header(path, dtypes, sep, encoding, source)
    try:
        frame = _read(dtypes)
    except pd.errors.ParserError as err:
        match = _FIELDS_RE.search(str(err))
        if match is None:
            raise DataFormatError(path, f"CSV lines '{expected}' ({err})") from err
        want, line, saw = (int(g) for g in match.groups())
        raise DataFormatError(
            path, f"{want} '{sep}'-separated fields ({expected}), saw {saw}", line=line,
            content=_content(path, line, encoding, source),
        ) from err
    except UnicodeDecodeError as err:
        line, content = _first_undecodable_line(path, encoding or "utf-8")
        raise DataFormatError(path, f"{encoding}-encoded text ({err.reason})" if line else f"{encoding}-encoded text ({err})",
                              line=line, content=content) from err
    except (ValueError, OverflowError):
        # A numeric column holds text or an empty cell: re-read as text to locate it.
        frame = _read({c: "str" for c in dtypes})
        _locate_bad_numbers(path, frame, dtypes, expected, header_lines, encoding, source)
        raise  # _locate_bad_numbers always raises; kept for type checkers
    if len(frame) == 0:
        raise DataFormatError(path, f"at least one data line ({expected}); the file has none")
    # Fully blank lines are skipped; every other line must fill the required columns.
    blank = frame.isna().all(axis=1).to_numpy()
    missing = frame[required].isna().to_numpy()
    bad = missing.any(axis=1) & ~blank
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        col = required[int(np.flatnonzero(missing[row])[0])]
        line = row + 1 + header_lines
        raise DataFormatError(
            path, f"a value for '{col}' ({expected})", line=line,
            content=_content(path, line, encoding, source),
        )
    # index = 1-based line numbers, so later checks (dates, ids) can name the line
    frame.index = pd.RangeIndex(1 + header_lines, 1 + header_lines + len(frame))
    if blank.any():
        frame = frame.loc[~blank]
    if len(frame) == 0:
        raise DataFormatError(path, f"at least one data line ({expected}); the file has none")
    return frame


def _first_undecodable_line(path: Path, encoding: str) -> tuple[int | None, str | None]:
    """The first line (1-based) that does not decode, read line by line (memory: one line)."""
    with guard_gzip(path), open_binary(path) as fh:
        for n, raw in enumerate(fh, start=1):
            try:
                raw.decode(encoding)
            except UnicodeDecodeError:
                return n, raw[:200].decode(encoding, errors="replace").rstrip("\r\n")
    return None, None


def _content(path: Path, line: int, encoding: str | None, source: Any) -> str:
    if source is not None:
        source.seek(0)
        for n, text in enumerate(source, start=1):
            if n == line:
                return text.rstrip("\r\n")
        return ""
    return line_at(path, line, encoding or "utf-8")


def _check_header(
    path: Path, dtypes: dict[str, str], sep: str, encoding: str | None, source: Any
) -> None:
    """The header line must name every column the parser needs."""
    header = _content(path, 1, encoding, source).lstrip("\ufeff")
    present = {c.strip().strip('"').strip("'") for c in header.split(sep)}
    for col in dtypes:
        if col not in present:
            raise DataFormatError(
                path, f"a header naming column '{col}' (needs {', '.join(dtypes)})", line=1,
                content=header,
            )


def _locate_bad_numbers(
    path: Path,
    text_frame: pd.DataFrame,
    dtypes: dict[str, str],
    expected: str,
    header_lines: int,
    encoding: str | None,
    source: Any,
) -> None:
    blank = text_frame.isna().all(axis=1).to_numpy()
    first: tuple[int, str] | None = None
    for col, kind in dtypes.items():
        if kind == "str":
            continue
        values = text_frame[col]
        parsed = pd.to_numeric(values, errors="coerce")
        bad = parsed.isna().to_numpy() & ~blank
        if kind.startswith("int"):
            as_float = parsed.to_numpy(dtype="float64", na_value=np.nan)
            finite = np.isfinite(as_float)
            bad |= finite & (np.nan_to_num(as_float) % 1 != 0)
            bad |= finite & (np.abs(np.nan_to_num(as_float)) >= 2.0**63)  # does not fit int64
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            if first is None or row < first[0]:
                first = (row, col)
    if first is None:
        raise DataFormatError(path, f"numeric columns as in '{expected}'")
    row, col = first
    kind = "an integer" if dtypes[col].startswith("int") else "a number"
    line = row + 1 + header_lines
    raise DataFormatError(
        path, f"{kind} in column '{col}' ({expected})", line=line,
        content=_content(path, line, encoding, source),
    )


# ----------------------------------------------------------------------------- JSON / dict lines

# field kinds understood by the record readers
KINDS = ("str", "int", "float", "list", "text", "any")


def _nonblank_lines(data: bytes) -> tuple[list[bytes], np.ndarray]:
    """Split into lines, dropping blank ones; return them with their 1-based numbers."""
    lines = data.split(b"\n")
    keep = [i for i, raw in enumerate(lines) if raw.strip()]
    return [lines[i] for i in keep], np.asarray(keep, dtype=np.int64) + 1


def read_json_lines(
    path: str | Path, fields: dict[str, str], required: Sequence[str], expected: str
) -> pd.DataFrame:
    """One JSON object a line → a DataFrame with ``fields`` (absent optional fields → None).

    ``fields`` maps name → kind: ``"str"``, ``"int"``, ``"float"``, ``"list"`` (list of
    strings; nested lists are kept as lists of lists), ``"text"`` (a string, or a list of
    strings joined by a space), ``"any"``.  The bulk path uses pyarrow's multithreaded JSON
    reader when the data's types agree with ``fields``; otherwise (or without pyarrow) each
    line goes through ``json.loads``.  A line that is not a JSON object, or lacks a
    required field, raises :class:`DataFormatError` with its line number.
    """
    path = Path(path)
    data = read_bytes(path)
    frame = _json_lines_pyarrow(data, fields, required)
    if frame is not None:
        return frame
    lines, numbers = _nonblank_lines(data)
    records: list[dict] = []
    for raw, n in zip(lines, numbers):
        try:
            obj = json.loads(raw)
        except ValueError as err:
            raise DataFormatError(
                path, f"one JSON object a line ({expected}): {err}", line=int(n),
                content=raw.decode("utf-8", "replace"),
            ) from None
        if not isinstance(obj, dict):
            raise DataFormatError(
                path, f"one JSON object a line ({expected})", line=int(n),
                content=raw.decode("utf-8", "replace"),
            )
        records.append(obj)
    return _records_frame(path, records, lines, numbers, fields, required, expected)


def _json_lines_pyarrow(
    data: bytes, fields: dict[str, str], required: Sequence[str]
) -> pd.DataFrame | None:
    """Bulk parse with pyarrow; ``None`` when unavailable or anything looks off."""
    if any(kind in ("text", "any") for kind in fields.values()):
        return None
    try:
        import pyarrow as pa
        import pyarrow.json as pj
    except ImportError:
        return None
    types = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(),
             "list": pa.list_(pa.string())}
    schema = pa.schema([(name, types[kind]) for name, kind in fields.items()])
    try:
        table = pj.read_json(
            io.BytesIO(data),
            read_options=pj.ReadOptions(block_size=1 << 24),
            parse_options=pj.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="ignore",
                newlines_in_values=False,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None  # the slow path names the bad line
    # pyarrow skips blank lines; a count mismatch means something unusual: take the slow path
    if table.num_rows != sum(1 for raw in data.splitlines() if raw.strip()):
        return None
    for name in required:
        if table.column(name).null_count:
            return None  # the slow path names the line that lacks it
    out = {}
    for name, kind in fields.items():
        col = table.column(name)
        if kind == "list":
            out[name] = pd.Series(col.to_pylist(), dtype=object)
        else:
            out[name] = col.to_pandas()
    return pd.DataFrame(out)


def read_literal_lines(
    path: str | Path, fields: dict[str, str], required: Sequence[str], expected: str
) -> pd.DataFrame:
    """One Python dict literal a line (Amazon 2014 metadata) → a DataFrame with ``fields``.

    Safe: each line goes through ``ast.literal_eval`` (literals only: a name, call or
    attribute is rejected, never executed), falling back to ``json.loads`` for a JSON line
    (``true``/``false``/``null``).  About 0.1 ms a metadata line on one core; joining lines
    into one big literal was measured slower (the whole AST is built first).
    """
    path = Path(path)
    data = read_bytes(path)
    lines, numbers = _nonblank_lines(data)
    records = [
        _literal_line(path, raw.decode("utf-8", "replace"), int(n), expected)
        for raw, n in zip(lines, numbers)
    ]
    return _records_frame(path, records, lines, numbers, fields, required, expected)


def _literal_line(path: Path, text: str, line: int, expected: str) -> dict:
    try:
        obj = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as err:
        try:
            obj = json.loads(text)
        except ValueError:
            raise DataFormatError(
                path, f"one Python dict literal a line ({expected}); "
                f"{type(err).__name__}: {str(err)[:80]}", line=line, content=text,
            ) from None
    if not isinstance(obj, dict):
        raise DataFormatError(
            path, f"one Python dict literal a line ({expected})", line=line, content=text
        )
    return obj


def _records_frame(
    path: Path,
    records: list[dict],
    lines: list[bytes],
    numbers: np.ndarray,
    fields: dict[str, str],
    required: Sequence[str],
    expected: str,
) -> pd.DataFrame:
    if not records:
        raise DataFormatError(path, f"at least one record ({expected}); the file has none")
    frame = pd.DataFrame.from_records(records, columns=list(fields))
    for name in required:
        missing = frame[name].isna().to_numpy()
        if missing.any():
            row = int(np.flatnonzero(missing)[0])
            raise DataFormatError(
                path, f"a field '{name}' ({expected})", line=int(numbers[row]),
                content=lines[row].decode("utf-8", "replace"),
            )
    for name, kind in fields.items():
        col = frame[name]
        if kind in ("int", "float"):
            parsed = pd.to_numeric(col, errors="coerce")
            bad = parsed.isna().to_numpy() & col.notna().to_numpy()
            if kind == "int":
                bad |= parsed.notna().to_numpy() & (parsed.fillna(0).to_numpy() % 1 != 0)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise DataFormatError(
                    path, f"a number in field '{name}' ({expected})", line=int(numbers[row]),
                    content=lines[row].decode("utf-8", "replace"),
                )
            frame[name] = parsed
        elif kind in ("str", "text"):
            frame[name] = col.map(_as_text, na_action="ignore")
        elif kind == "list":
            frame[name] = col.map(_as_list)
    return frame


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return " ".join(_as_text(v) for v in value)
    return str(value)


def _as_list(value: Any) -> list:
    if isinstance(value, list):
        return value
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    return [value]


# ----------------------------------------------------------------------------- item text

_TAG_RE = r"<[^>]*>"
_MAX_FIELD_CHARS = 2000  # UniSRec's clean_text drops a field of 2,000+ characters


def clean_text(values: pd.Series) -> pd.Series:
    """UniSRec-style cleaning of one text field (vectorised over items).

    HTML entities unescaped, tags stripped, double quotes / newlines removed (as UniSRec's
    ``clean_text``), whitespace collapsed, trailing periods replaced by exactly one; a field
    of 2,000 characters or more, or an empty one, becomes ``""``.
    """
    text = values.astype(object).where(values.notna(), "").astype(str)
    has_entity = text.str.contains("&", regex=False).to_numpy()
    if has_entity.any():
        text = text.copy()
        text[has_entity] = text[has_entity].map(html.unescape)
    text = (
        text.str.replace(_TAG_RE, " ", regex=True)
        .str.replace('"', "", regex=False)
        .str.replace(r"\s+", " ", regex=True)
        .str.strip()
        .str.replace(r"[\s.]+$", "", regex=True)
    )
    keep = (text.str.len() > 0) & (text.str.len() < _MAX_FIELD_CHARS)
    return (text + ".").where(keep, "")


def compose_text(parts: Sequence[pd.Series]) -> pd.Series:
    """Join cleaned fields (e.g. title, categories, brand) with a space, skipping empty ones."""
    cleaned = [clean_text(p).reset_index(drop=True) for p in parts]
    out = cleaned[0]
    for part in cleaned[1:]:
        out = out + " " + part
    return out.str.replace(r"\s+", " ", regex=True).str.strip()


def join_lists(values: pd.Series, sep: str = " ") -> pd.Series:
    """Each list of strings joined by ``sep`` (empty list → ``""``)."""
    return values.map(lambda v: sep.join(str(x) for x in v) if isinstance(v, list) else "")


# ----------------------------------------------------------------------------- results


def stem_name(path: str | Path, prefixes: Sequence[str] = (), suffixes: Sequence[str] = ()) -> str:
    """A dataset name from a file name: ``meta_Office_Products.json.gz`` → ``Office_Products``."""
    name = Path(path).name
    for ext in (".gz", ".json", ".csv", ".jsonl", ".dat", ".txt", ".xlsx", ".inter"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    for prefix in prefixes:
        if name.startswith(prefix):
            name = name[len(prefix) :]
    for suffix in suffixes:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name or Path(path).name


def make_dataset(
    name: str,
    user: pd.Series | np.ndarray,
    item: pd.Series | np.ndarray,
    timestamp: pd.Series | np.ndarray,
    *,
    items: pd.DataFrame | None = None,
    sources: Sequence[str | Path] = (),
    time_unit: int = 1,
    notes: Sequence[str] = (),
) -> RawDataset:
    """Build and validate a :class:`RawDataset` with the contract's dtypes.

    Timestamps must lie in [1970-01-01, 2100-01-01) as Unix seconds: a negative one or one past
    2100 (e.g. milliseconds given as seconds) is a :class:`DataFormatError` naming the first such
    record (and its line, when ``timestamp`` is a frame column of :func:`read_csv_checked`)."""
    check_timestamps(timestamp, sources[0] if sources else name, user, item)
    interactions = pd.DataFrame(
        {
            "user": pd.Series(np.asarray(user)).astype(str),
            "item": pd.Series(np.asarray(item)).astype(str),
            "timestamp": pd.Series(np.asarray(timestamp)).astype("int64"),
        }
    )
    if items is not None:
        items = items.reset_index(drop=True)
        items["item"] = items["item"].astype(str)
        items["text"] = items["text"].astype(object).where(items["text"].notna(), "").astype(str)
    dataset = RawDataset(
        name=name,
        interactions=interactions,
        items=items,
        sources=[Path(s) for s in sources],
        time_unit=time_unit,
        notes=list(notes),
    )
    dataset.validate()
    return dataset


MAX_TIMESTAMP = 4_102_444_800  # 2100-01-01 00:00 UTC


def check_timestamps(timestamp: pd.Series | np.ndarray, path: str | Path, user: Any, item: Any) -> None:
    """Negative or post-2100 Unix-second timestamps -> :class:`DataFormatError` on the first one."""
    ts = np.asarray(timestamp)
    if ts.size == 0 or ts.dtype.kind not in "iuf":
        return
    bad = (ts < 0) | (ts >= MAX_TIMESTAMP)
    if not bad.any():
        return
    pos = int(np.flatnonzero(bad)[0])
    line = None
    if isinstance(timestamp, pd.Series) and isinstance(timestamp.index, pd.RangeIndex) and timestamp.index.start > 0:
        line = int(timestamp.index[pos])  # read_csv_checked numbers rows by their file line
    content = f"user {np.asarray(user)[pos]}, item {np.asarray(item)[pos]}, timestamp {ts[pos]}"
    raise DataFormatError(
        path, f"Unix timestamps in seconds from 1970-01-01 to 2100-01-01 ({int(bad.sum())} outside; "
              "milliseconds or a sentinel value?)", line=line, content=content)


def first_per_item(frame: pd.DataFrame, key: str = "item") -> pd.DataFrame:
    """Keep the first row per item id (publishers' metadata files hold duplicates)."""
    return frame.drop_duplicates(subset=key, keep="first").reset_index(drop=True)


def dates_to_seconds(
    values: pd.Series, formats: Sequence[str], path: str | Path, column: str
) -> tuple[np.ndarray, str]:
    """Parse date strings with the first of ``formats`` that parses every value.

    ``values`` comes from :func:`read_csv_checked` (its index is the line number).  Returns
    epoch seconds (UTC, as the values carry no zone) and the format used; raises a
    :class:`DataFormatError` naming the first line no format parses.
    """
    text = values.astype(str).str.strip()
    best: tuple[int, str, pd.Series] | None = None
    for fmt in formats:
        parsed = pd.to_datetime(text, format=fmt, errors="coerce")
        n_bad = int(parsed.isna().sum())
        if n_bad == 0:
            return _epoch_seconds(parsed), fmt
        if best is None or n_bad < best[0]:
            best = (n_bad, fmt, parsed)
    assert best is not None
    row = int(np.flatnonzero(best[2].isna().to_numpy())[0])
    raise DataFormatError(
        path, f"a date in column '{column}' in one of the formats {list(formats)}",
        line=int(values.index[row]), content=str(values.iloc[row]),
    )


def _epoch_seconds(parsed: pd.Series) -> np.ndarray:
    return (parsed.to_numpy(dtype="datetime64[s]") - np.datetime64(0, "s")).astype(np.int64)


def clean_labels(values: pd.Series) -> pd.Series:
    """Category lists cleaned element-wise (HTML unescaped, tags stripped, whitespace
    collapsed, empty labels and within-item duplicates dropped; order kept).

    Accepts flat lists (``["Office Products", "Paper"]``) or nested category paths
    (Amazon 2014: ``[["Beauty", "Makeup"], ["Beauty", "Skin Care"]]``), flattened path by
    path so the first path's first level comes first.
    """
    positional = values.reset_index(drop=True)
    flat = positional.map(_as_list).explode()
    while True:  # nested paths: explode until every element is a scalar
        nested = flat.map(lambda v: isinstance(v, list))
        if not nested.any():
            break
        flat = flat.map(lambda v: v if isinstance(v, list) else [v]).explode()
    flat = flat.dropna()
    text = flat.astype(str)
    has_entity = text.str.contains("&", regex=False)
    if has_entity.any():
        text[has_entity] = text[has_entity].map(html.unescape)
    text = (
        text.str.replace(_TAG_RE, " ", regex=True).str.replace(r"\s+", " ", regex=True).str.strip()
    )
    text = text[text.str.len() > 0]
    frame = pd.DataFrame({"row": text.index.to_numpy(), "label": text.to_numpy(dtype=object)})
    frame = frame.drop_duplicates(keep="first")
    grouped = frame.groupby("row", sort=False)["label"].agg(list).reindex(range(len(values)))
    out = grouped.map(lambda v: v if isinstance(v, list) else [])
    out.index = values.index
    return out


def read_records(
    path: str | Path, fields: dict[str, str], required: Sequence[str], expected: str
) -> pd.DataFrame:
    """JSON lines or Python dict-literal lines, told apart by the first non-blank line."""
    with guard_gzip(path), open_binary(path) as fh:
        first = b""
        for raw in fh:
            if raw.strip():
                first = raw
                break
    try:
        json.loads(first)
        is_json = True
    except ValueError:
        is_json = False
    if is_json:
        return read_json_lines(path, fields, required, expected)
    return read_literal_lines(path, fields, required, expected)


def category_items(item: np.ndarray, category: np.ndarray) -> pd.DataFrame:
    """Items without text whose one category is the first seen for them (Tmall, Tafeng)."""
    frame = pd.DataFrame({"item": item, "category": category}).drop_duplicates("item")
    return pd.DataFrame(
        {
            "item": frame["item"].to_numpy(),
            "text": np.full(len(frame), "", dtype=object),
            "categories": [[c] for c in frame["category"].astype(str).to_numpy()],
        }
    )
