"""Interop with the papers' own processed files: RecBole / UniSRec atomic files.

Reading (:func:`read_atomic`)
    * the split files ``<ds>.train.inter``, ``<ds>.valid.inter``, ``<ds>.test.inter`` that
      UniSRec publishes and MIRACLE/HORAE reuse: tab-separated, a ``field:type`` header
      (``user_id:token  item_id_list:token_seq  item_id:token``, optionally
      ``timestamp_list:float_seq`` and ``timestamp:float``), one row per (history, target).
      Each user's full chronological sequence ``S`` is rebuilt so that the shared
      leave-one-out split reproduces the authors' split exactly: the user's first row (the
      shortest training history) gives ``S[:h]``, and the targets of the training rows (in
      order of history length), then the valid target, then the test target give the rest.
      Every row of the three files is then checked against ``S`` (its history must be the
      ``h`` items before its target); inconsistencies raise a
      :class:`~datamodules.raw.DataFormatError` naming the file and line (``strict=False``
      counts them in ``notes`` instead).  Training histories truncated to the same maximum
      length are ordered by their position in the file, in the direction the untruncated
      rows run (UniSRec writes each user's training rows longest prefix first).
    * a plain ``<ds>.inter`` (``user_id:token item_id:token [timestamp:float]``), one
      interaction a line (what :func:`export_atomic` writes).
    * ``<ds>.text`` (``item_id:token text:token_seq``, UniSRec's item text) when present.

    Without timestamps (UniSRec's files have none) each user's sequence gets strictly
    increasing synthetic timestamps ``1, 2, 3, ...`` seconds and ``notes`` says so.

Writing (:func:`export_atomic`)
    A zoo processed split → ``<name>.inter`` (``user_id:token item_id:token
    timestamp:float``), and optionally the UniSRec-style ``<name>.{train,valid,test}.inter``
    leave-one-out files, so RecBole runs on the identical split (``benchmark_filename``).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from datamodules.raw import DataFormatError, RawDataset
from datamodules.rawio import decode, line_at, make_dataset, read_bytes, read_csv_checked
from zoo.runfiles import atomic_write

ATOMIC_TYPES = ("token", "token_seq", "float", "float_seq")
SPLITS = ("train", "valid", "test")
_DTYPES = {"token": "str", "token_seq": "str", "float": "float64", "float_seq": "str"}


# ----------------------------------------------------------------------------- atomic tables


def read_atomic_table(
    path: str | Path, fields: Sequence[str], optional: Sequence[str] = ()
) -> pd.DataFrame:
    """A RecBole atomic file → DataFrame with the requested fields (by name, types dropped).

    ``fields`` must all be in the header; ``optional`` ones are read when present.  Sequence
    fields (``token_seq``/``float_seq``) are returned as their space-separated text.  The
    frame's index holds each row's 1-based line number.
    """
    path = Path(path)
    text = decode(read_bytes(path), path, None)
    header = text.split("\n", 1)[0].rstrip("\r").lstrip("\ufeff")
    declared: dict[str, str] = {}
    for column in header.split("\t"):
        field, sep, kind = column.partition(":")
        if not sep or kind not in ATOMIC_TYPES:
            raise DataFormatError(
                path, f"a RecBole atomic header of tab-separated field:type names "
                f"(types {', '.join(ATOMIC_TYPES)})", line=1, content=header,
            )
        declared[field] = kind
    for field in fields:
        if field not in declared:
            raise DataFormatError(
                path, f"a header with field '{field}' (needs {', '.join(fields)})", line=1,
                content=header,
            )
    wanted = [f for f in declared if f in fields or f in optional]
    dtypes = {f"{f}:{declared[f]}": _DTYPES[declared[f]] for f in wanted}
    frame = read_csv_checked(
        path, dtypes=dtypes, sep="\t", expected="tab-separated " + header.replace("\t", " "),
        required=[f"{f}:{declared[f]}" for f in fields if not declared[f].endswith("_seq")],
        source=io.StringIO(text), quoting=csv.QUOTE_NONE,
    )
    frame.columns = [c.partition(":")[0] for c in frame.columns]
    for field in wanted:
        if declared[field].endswith("_seq"):
            frame[field] = frame[field].fillna("")
    return frame


def _split_tokens(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Space-separated sequences → (flat tokens, length of each row)."""
    text = values.astype(str).str.strip()
    lists = text.str.split()
    lengths = lists.map(len).to_numpy(dtype=np.int64)
    flat = lists.explode().dropna().to_numpy(dtype=object)
    return flat, lengths


# ----------------------------------------------------------------------------- reading


def _find(path: Path, name: str | None) -> tuple[Path, str]:
    """Resolve (folder, dataset name) from a folder or a ``<name>[.split].inter`` file."""
    if path.is_file():
        stem = path.name[: -len(".inter")] if path.name.endswith(".inter") else path.stem
        for split in SPLITS:
            if stem.endswith("." + split):
                stem = stem[: -len(split) - 1]
        return path.parent, name or stem
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if name is None:
        stems = sorted({p.name.split(".")[0] for p in path.glob("*.inter")})
        if len(stems) != 1:
            raise ValueError(
                f"{path}: cannot tell the dataset name from {stems or 'no .inter files'}; "
                "pass name="
            )
        name = stems[0]
    return path, name


def read_atomic(
    path: str | Path, name: str | None = None, strict: bool = True
) -> RawDataset:
    """Read RecBole/UniSRec atomic files (see module docstring).

    Args:
        path: the folder holding ``<name>.*.inter``, or one of those files.
        name: the dataset name (the file stem; default: inferred).
        strict: raise on an inconsistency between the split files (default) instead of
            counting it in ``notes``.
    """
    folder, name = _find(Path(path), name)
    split_files = [folder / f"{name}.{split}.inter" for split in SPLITS]
    plain = folder / f"{name}.inter"
    given = Path(path)
    if given.is_file() and given.name == plain.name:  # the plain file named explicitly
        user, item, seconds, notes, synthetic = _read_plain(plain)
        sources = [plain]
    elif all(p.is_file() for p in split_files):
        user, item, seconds, notes, synthetic = _reconstruct(split_files, strict)
        sources = split_files
    elif any(p.is_file() for p in split_files):
        missing = [p.name for p in split_files if not p.is_file()]
        raise FileNotFoundError(f"{folder}: split files incomplete, missing {', '.join(missing)}")
    elif plain.is_file():
        user, item, seconds, notes, synthetic = _read_plain(plain)
        sources = [plain]
    else:
        raise FileNotFoundError(
            f"{folder}: no {name}.inter nor {name}.train/valid/test.inter atomic files"
        )
    items = None
    text_file = folder / f"{name}.text"
    if text_file.is_file():
        table = read_atomic_table(text_file, ["item_id", "text"])
        items = pd.DataFrame({
            "item": table["item_id"].to_numpy(),
            "text": table["text"].to_numpy(dtype=object),
            "categories": [[] for _ in range(len(table))],
        }).drop_duplicates("item")
        sources.append(text_file)
        notes.append(f"atomic: item text for {len(items):,} items from {text_file.name}")
    return make_dataset(
        name, user, item, seconds, items=items, sources=sources,
        time_unit=1, notes=notes,
    )


def _read_plain(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], bool]:
    table = read_atomic_table(path, ["user_id", "item_id"], optional=["timestamp"])
    user = table["user_id"].to_numpy(dtype=object)
    item = table["item_id"].to_numpy(dtype=object)
    if "timestamp" in table.columns:
        seconds = np.rint(table["timestamp"].to_numpy(dtype=np.float64)).astype(np.int64)
        return user, item, seconds, [f"atomic: {len(table):,} interactions from {path.name}"], False
    # no time: file order within each user, as strictly increasing 1, 2, 3, ...
    seconds = pd.Series(user).groupby(user, sort=False).cumcount().to_numpy() + 1
    notes = [f"atomic: {len(table):,} interactions from {path.name}",
             "atomic: no timestamp field; synthetic timestamps 1, 2, 3, ... in file order"]
    return user, item, seconds.astype(np.int64), notes, True


def _reconstruct(
    files: list[Path], strict: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], bool]:
    """Rebuild each user's full sequence from train/valid/test rows and check every row."""
    tables = []
    for split_id, path in enumerate(files):
        table = read_atomic_table(
            path, ["user_id", "item_id_list", "item_id"], optional=["timestamp_list", "timestamp"]
        )
        table["split"] = split_id
        table["line"] = table.index.to_numpy()
        tables.append(table.reset_index(drop=True))
    rows = pd.concat(tables, ignore_index=True)
    hist_items, hist_len = _split_tokens(rows["item_id_list"])
    rows["h"] = hist_len
    users = rows["user_id"].to_numpy(dtype=object)

    # a user must have exactly one valid and one test row
    for split_id in (1, 2):
        per_user = rows.loc[rows["split"] == split_id, "user_id"].value_counts()
        dup = per_user[per_user > 1]
        if len(dup):
            raise DataFormatError(files[split_id], f"one row per user, user {dup.index[0]!r} "
                                  f"has {int(dup.iloc[0])}")
    train_users = set(rows.loc[rows["split"] == 0, "user_id"])
    valid_users = set(rows.loc[rows["split"] == 1, "user_id"])
    test_users = set(rows.loc[rows["split"] == 2, "user_id"])
    if valid_users != test_users or not train_users <= test_users:
        odd = sorted((valid_users ^ test_users) | (train_users - test_users))[:5]
        raise DataFormatError(files[2], f"the same users in the valid and test files (and no "
                              f"training-only users); differing users e.g. {odd}")

    # order rows per user: train by history length (ties: file order in the direction the
    # untruncated rows run), then valid, then test
    train = rows["split"].to_numpy() == 0
    h = rows["h"].to_numpy()
    same_user = train[1:] & train[:-1] & (users[1:] == users[:-1])
    steps = np.diff(h)[same_user]
    descending = int((steps < 0).sum()) > int((steps > 0).sum())
    file_order = np.arange(len(rows)) * (-1 if descending else 1)
    h_key = np.where(train, h, 0)
    user_codes, user_index = np.unique(users.astype(str), return_inverse=True)
    order = np.lexsort((file_order, h_key, rows["split"].to_numpy(), user_index))
    rows = rows.iloc[order].reset_index(drop=True)
    hist_offsets = np.concatenate([[0], np.cumsum(hist_len)])
    hist_start = hist_offsets[:-1][order]
    h = rows["h"].to_numpy()
    user_index = user_index[order]

    # S = history of each user's first row + the targets of all its rows in order
    first = np.r_[True, user_index[1:] != user_index[:-1]]
    rank = np.arange(len(rows)) - np.maximum.accumulate(np.where(first, np.arange(len(rows)), 0))
    base_h = np.repeat(h[first], np.bincount(user_index)[user_index[first]])
    position = base_h + rank  # index of each row's target in S
    n_rows = np.bincount(user_index)
    seq_len = h[first] + n_rows[user_index[first]]
    seq_off = np.concatenate([[0], np.cumsum(seq_len)])[:-1]
    seq_items = np.empty(int(seq_len.sum()), dtype=object)
    first_rows = np.flatnonzero(first)
    base_idx = _ranges(hist_start[first_rows], h[first_rows])
    base_pos = _ranges(seq_off, h[first_rows])
    seq_items[base_pos] = hist_items[base_idx]
    target_pos = seq_off[user_index] + position
    seq_items[target_pos] = rows["item_id"].to_numpy(dtype=object)

    # check every row: history == the h items before its target
    tok_row = np.repeat(np.arange(len(rows)), h)
    tok_k = _ranges(np.zeros(len(rows), dtype=np.int64), h) if len(tok_row) else tok_row
    underflow = position - h < 0  # a history longer than the rebuilt prefix
    expected_pos = seq_off[user_index][tok_row] + np.maximum(position - h, 0)[tok_row] + tok_k
    expected_pos = np.minimum(expected_pos, len(seq_items) - 1)
    got = hist_items[_ranges(hist_start, h)]
    bad_tok = got != seq_items[expected_pos]
    bad_row = underflow.copy()
    bad_row[tok_row[bad_tok]] = True
    notes = [
        f"atomic: rebuilt {len(seq_len):,} user sequences ({int(seq_len.sum()):,} interactions) "
        f"from {', '.join(p.name for p in files)}",
    ]
    if bad_row.any():
        splits = rows["split"].to_numpy()
        counts = {SPLITS[s]: int((bad_row & (splits == s)).sum()) for s in range(3)}
        r = int(np.flatnonzero(bad_row)[0])
        path, line = files[int(splits[r])], int(rows["line"].iloc[r])
        message = (f"each history to be the items just before its target in the user's "
                   f"sequence rebuilt from all three files (inconsistent rows: {counts})")
        if strict:
            raise DataFormatError(path, message, line=line, content=line_at(path, line))
        notes.append(f"atomic: WARNING {message}; first at {path.name} line {line}")

    seconds, synthetic, time_note = _sequence_times(
        rows, seq_off, seq_len, user_index, position, tok_row, expected_pos
    )
    notes.append(time_note)
    seq_user = np.repeat(user_codes[user_index[first]], seq_len)
    return seq_user, seq_items, seconds, notes, synthetic


def _sequence_times(
    rows: pd.DataFrame,
    seq_off: np.ndarray,
    seq_len: np.ndarray,
    user_index: np.ndarray,
    position: np.ndarray,
    tok_row: np.ndarray,
    tok_pos: np.ndarray,
) -> tuple[np.ndarray, bool, str]:
    """Real times when the files give one for every position, else synthetic 1, 2, 3, ..."""
    total = int(seq_len.sum())
    if "timestamp_list" in rows.columns or "timestamp" in rows.columns:
        times = np.full(total, np.nan)
        if "timestamp" in rows.columns:
            times[seq_off[user_index] + position] = rows["timestamp"].to_numpy(dtype=np.float64)
        if "timestamp_list" in rows.columns:
            flat, lengths = _split_tokens(rows["timestamp_list"])
            if np.array_equal(lengths, rows["h"].to_numpy()):
                times[tok_pos] = pd.to_numeric(pd.Series(flat), errors="coerce").to_numpy()
        if not np.isnan(times).any():
            return np.rint(times).astype(np.int64), False, "atomic: timestamps from the files"
    within = np.arange(total) - np.repeat(seq_off, seq_len)
    return (within + 1).astype(np.int64), True, (
        "atomic: the files give no timestamp for every position; synthetic strictly "
        "increasing timestamps 1, 2, 3, ... (seconds) follow each rebuilt sequence"
    )


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(s, s + n)`` for each (s, n), vectorised."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])[:-1]
    within = np.arange(total) - np.repeat(offsets, lengths)
    return np.repeat(np.asarray(starts, dtype=np.int64), lengths) + within


# ----------------------------------------------------------------------------- writing


def _write_atomic(path: Path, header: Sequence[str], columns: Sequence[Sequence[str]]) -> None:
    """Write a tab-separated atomic file, whole or not at all (:func:`zoo.runfiles.atomic_write`)."""
    text = "\t".join(header) + "\n"
    if len(columns[0]):
        body = pd.Series(columns[0], dtype=object).astype(str)
        for col in columns[1:]:
            body = body + "\t" + pd.Series(col, dtype=object).astype(str)
        text += "\n".join(body.to_list()) + "\n"
    atomic_write(path, text)


def _format_times(times: np.ndarray) -> np.ndarray:
    times = np.asarray(times)
    if np.issubdtype(times.dtype, np.integer) or np.all(np.mod(times, 1) == 0):
        return times.astype(np.int64).astype(str)
    return np.char.mod("%.6f", times.astype(np.float64))


def export_atomic(
    user: np.ndarray,
    item: np.ndarray,
    timestamp: np.ndarray,
    out_dir: str | Path,
    name: str,
    split: bool = False,
    max_len: int = 50,
) -> list[Path]:
    """Write interactions as RecBole atomic files; return the written paths.

    Args:
        user, item, timestamp: one entry per interaction (``[M]`` each; any order — each
            user's interactions are written in time order, ties in the given order).
        out_dir: folder to write to (created if needed).
        name: dataset name: ``<name>.inter`` (``user_id:token item_id:token
            timestamp:float``) is written.
        split: also write UniSRec's leave-one-out ``<name>.{train,valid,test}.inter``
            (``user_id:token item_id_list:token_seq item_id:token``; last item test, second
            last valid, every earlier prefix a training row, written longest first as
            UniSRec does; histories cut to the last ``max_len`` items).  Users with fewer than
            3 interactions are left out of these files.

    Every file goes through a temporary file and ``os.replace``.
    """
    user = np.asarray(user)
    item = np.asarray(item)
    timestamp = np.asarray(timestamp)
    if not (len(user) == len(item) == len(timestamp)):
        raise ValueError(f"user, item, timestamp lengths differ: {len(user)}, {len(item)}, "
                         f"{len(timestamp)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    order = np.lexsort((np.arange(len(user)), timestamp, user))
    user, item, timestamp = user[order], item[order], timestamp[order]
    written = [out / f"{name}.inter"]
    _write_atomic(written[0], ["user_id:token", "item_id:token", "timestamp:float"],
                  [user, item, _format_times(timestamp)])
    if split:
        written += _export_split(user.astype(str), item.astype(str), out, name, max_len)
    return written


def _export_split(user: np.ndarray, item: np.ndarray, out: Path, name: str,
                  max_len: int) -> list[Path]:
    """UniSRec's ``convert_to_atomic_files`` layout from user-sorted, time-sorted arrays."""
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
    lengths = np.diff(np.r_[starts, len(user)])
    keep = lengths >= 3
    starts, lengths = starts[keep], lengths[keep]
    # sequences as text, with each token's character offset, so a history is one slice
    token_len = pd.Series(item, dtype=object).str.len().to_numpy() + 1  # token + separator
    char_end = np.cumsum(token_len)
    char_start = char_end - token_len
    joined = " ".join(item.tolist()) + " "
    header = ["user_id:token", "item_id_list:token_seq", "item_id:token"]
    paths = []
    # target offsets within each user: train n-3 .. 1 (longest prefix first), valid, test
    n_train = lengths - 3
    train_p = np.repeat(n_train, n_train) - _ranges(np.zeros(len(starts)), n_train)
    spec = {
        "train": (np.repeat(starts, n_train), train_p),
        "valid": (starts, lengths - 2),
        "test": (starts, lengths - 1),
    }
    for split_name in SPLITS:
        s, p = spec[split_name]
        first = s + np.maximum(p - max_len, 0)
        target = s + p
        hist = [joined[a : b - 1] for a, b in zip(char_start[first], char_start[target])]
        path = out / f"{name}.{split_name}.inter"
        _write_atomic(path, header, [user[target], np.asarray(hist, dtype=object), item[target]])
        paths.append(path)
    return paths
