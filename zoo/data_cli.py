"""``zoo data``: prepare and inspect a dataset without training.

    zoo data prepare --format amazon2018 --ratings Office.csv --meta meta_Office.json.gz --k 5
    zoo data stats ~/.cache/zoo/Office-<key>

The flags mirror ``SequentialDataModule``'s options, so the same options in a recipe's ``data:``
section give the same cache.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _parser(formats: bool = True) -> argparse.ArgumentParser:
    """``formats=False``: no ``--format`` choices, so ``stats`` does not import the parsers (pandas)."""
    if formats:
        from datamodules.formats import FORMATS
    p = argparse.ArgumentParser(prog="zoo data", description="Prepare and inspect datasets.")
    sub = p.add_subparsers(dest="cmd", required=True)
    pr = sub.add_parser("prepare", help="process raw files into the cache and print the summary")
    pr.add_argument("--format", required=True, choices=sorted(FORMATS) if formats else None)
    for key in ("path", "ratings", "reviews", "meta", "folder"):
        pr.add_argument(f"--{key}", default=None, help=f"raw {key} path (as the format needs)")
    pr.add_argument("--name", default=None, help="dataset name (cache folder prefix)")
    pr.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="parser option, e.g. --option user_field=customer (repeatable)")
    pr.add_argument("--k", type=int, default=5, help="k-core threshold")
    pr.add_argument("--k-core-mode", choices=("iterative", "single_pass"), default="iterative",
                    help="iterative k-core, or one round as ComiRec's/REMI's preprocessing (HPCL4SR)")
    pr.add_argument("--min-seq-len", type=int, default=0)
    pr.add_argument("--require-text", action="store_true")
    pr.add_argument("--category-level", type=int, default=0)
    pr.add_argument("--protocol", default="leave_one_out", choices=["leave_one_out", "user_split"])
    pr.add_argument("--split-seed", type=int, default=42)
    pr.add_argument("--max-len", type=int, default=50, help="(batches only; not part of the cache)")
    pr.add_argument("--out", default="~/.cache/zoo", help="cache root")
    st = sub.add_parser("stats", help="print the summary of a processed cache")
    st.add_argument("cache_dir")
    st.add_argument("--json", action="store_true", help="print stats.json instead of the summary")
    return p


def _value(v: str):
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def data_main(argv: list[str]) -> int:
    a = _parser(formats=argv[:1] != ["stats"]).parse_args(argv)
    try:
        if a.cmd == "stats":
            path = Path(a.cache_dir).expanduser()
            if not (path / "stats.json").is_file():
                raise FileNotFoundError(f"'{path}' is not a zoo processed cache (no stats.json)")
            print((path / ("stats.json" if a.json else "summary.md")).read_text(encoding="utf-8"))
            return 0
        from datamodules.processing import ProcessingOptions, prepare_dataset  # pandas/numpy, no torch

        opts = {}
        for kv in a.option:
            if "=" not in kv:
                raise ValueError(f"--option expects KEY=VALUE, got {kv!r}")
            k, v = kv.split("=", 1)
            opts[k] = _value(v)
        paths = {k: getattr(a, k) for k in ("path", "ratings", "reviews", "meta", "folder") if getattr(a, k)}
        po = ProcessingOptions(k_core=a.k, k_core_mode=a.k_core_mode, min_seq_len=a.min_seq_len, require_text=a.require_text,
                               protocol=a.protocol, split_seed=a.split_seed, category_level=a.category_level)
        d = prepare_dataset(a.format, paths, opts, po, a.out, a.name, verbose=False)
        print((d.path / "summary.md").read_text(encoding="utf-8"))
        return 0
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"zoo data: error: {e}", file=sys.stderr)
        return 1
