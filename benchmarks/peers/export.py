"""Write the zoo's exact leave-one-out split to the peers' input formats, and check the targets.

The split is read from the zoo's own datamodule (``SequentialDataModule.setup()``: its test and
validation examples), never re-derived from the raw ratings.  Written under ``--out``:

* ``rechorus/<name>/{train,dev,test}.csv`` -- ReChorus: tab-separated ``user_id item_id time``.
  ``time`` is the item's 0-based position in the user's sequence, because ReChorus sorts equal
  times unstably (shared/ENVIRONMENT.md, "Peers").  Ids are the zoo's indices (users shifted by
  +1: ReChorus reserves 0).
* ``recbole/<name>/<name>.{train,valid,test}.inter`` -- RecBole atomic benchmark files
  (``benchmark_filename: [train, valid, test]``): ``user_id:token item_id_list:token_seq
  item_id:token``, written by :func:`datamodules.atomic.export_atomic` (histories cut to
  ``max_len``).  Tokens are the zoo's indices.
* ``id_map.json`` -- for every exported user: zoo index, the publisher's original id (the key of
  the zoo's ``ranks.npz``), the ReChorus id, the RecBole token; the item tokens are zoo indices.
* ``split.npz`` -- the zoo's per-user test and valid targets (``test_target``,
  ``valid_target``, keyed by ``user`` = zoo index), what the peers' drivers check against.

After writing, every file is read back and the number of test (and valid) targets that differ
from the datamodule's is asserted to be 0.

    python benchmarks/peers/export.py --out /tmp/peers/data [--config recipes/sasrec.yaml]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from datamodules.atomic import export_atomic  # noqa: E402
from zoo.runfiles import atomic_write  # noqa: E402

NAME = "ml_latest_small"


def split_from_datamodule(dm: Any) -> dict[str, np.ndarray]:
    """The datamodule's leave-one-out split as per-user sequences: ``user`` [U] zoo indices,
    ``ptr`` [U+1] offsets into ``items`` (each user's train items, then the valid target, then
    the test target), ``test_target`` / ``valid_target`` [U].  Taken from ``dm.eval_sets``
    (``setup()`` is called if needed)."""
    if not getattr(dm, "eval_sets", None):
        dm.setup("fit")
    if dm.protocol != "leave_one_out":
        raise ValueError(f"peers export: data.protocol must be leave_one_out, got {dm.protocol!r}")
    te, va = dm.eval_sets["test"], dm.eval_sets["val"]
    if not np.array_equal(te.user, va.user) or not np.array_equal(te.start, va.start) or not np.array_equal(va.end + 1, te.end):
        raise ValueError("peers export: the datamodule's valid and test examples are not the same users' "
                         "last-but-one and last items (not a leave-one-out split)")
    items = dm.data.items
    lens = te.end - te.start + 1  # [U] history + test target
    ptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    pos = np.repeat(te.start - ptr[:-1], lens) + np.arange(ptr[-1])  # flat positions in dm.data.items
    return {"user": np.asarray(te.user, dtype=np.int64), "ptr": ptr, "items": items[pos].astype(np.int64),
            "test_target": items[te.end].astype(np.int64), "valid_target": items[va.end].astype(np.int64)}


def write_rechorus(split: dict[str, np.ndarray], folder: Path) -> list[Path]:
    """ReChorus's train/dev/test.csv (user ids +1, ``time`` = position in the sequence)."""
    paths = []
    ptr, items = split["ptr"], split["items"]
    rows: dict[str, list[str]] = {"train": [], "dev": [], "test": []}
    for u, a, b in zip(split["user"], ptr[:-1], ptr[1:]):
        seq = items[a:b]
        for t, i in enumerate(seq):
            key = "test" if t == len(seq) - 1 else "dev" if t == len(seq) - 2 else "train"
            rows[key].append(f"{u + 1}\t{i}\t{t}\n")
    for key, lines in rows.items():
        path = folder / f"{key}.csv"
        atomic_write(path, "user_id\titem_id\ttime\n" + "".join(lines))
        paths.append(path)
    return paths


def write_recbole(split: dict[str, np.ndarray], folder: Path, name: str, max_len: int) -> list[Path]:
    """RecBole's ``<name>.{train,valid,test}.inter`` through the zoo's own atomic writer."""
    lens = np.diff(split["ptr"])
    user = np.repeat(split["user"], lens)
    pos = np.arange(len(user)) - np.repeat(split["ptr"][:-1], lens)
    written = export_atomic(user, split["items"], pos, folder, name, split=True, max_len=max_len)
    (folder / f"{name}.inter").unlink(missing_ok=True)  # RecBole with benchmark_filename reads only the three
    return [p for p in written if p.name != f"{name}.inter"]


def read_rechorus_targets(folder: Path, stage: str = "test") -> dict[int, int]:
    """zoo user index -> target item, from ReChorus's dev.csv / test.csv."""
    out = {}
    with open(folder / f"{stage}.csv", encoding="utf-8") as f:
        r = csv.reader(f, delimiter="\t")
        next(r)
        for u, i, _t in r:
            out[int(u) - 1] = int(i)
    return out


def read_recbole_targets(folder: Path, name: str, stage: str = "test") -> dict[int, int]:
    """zoo user index -> target item, from RecBole's ``<name>.<stage>.inter``."""
    out = {}
    with open(folder / f"{name}.{stage}.inter", encoding="utf-8") as f:
        r = csv.reader(f, delimiter="\t")
        next(r)
        for u, _hist, i in r:
            out[int(u)] = int(i)
    return out


def count_differing(split: dict[str, np.ndarray], targets: dict[int, int], stage: str = "test") -> int:
    """Users whose exported target differs from the datamodule's (a missing user counts)."""
    want = split[f"{stage}_target"]
    return int(sum(targets.get(int(u), -1) != int(t) for u, t in zip(split["user"], want)) + max(0, len(targets) - len(want)))


def export(dm: Any, out: str | Path, user_ids: list[str], max_len: int = 20, name: str = NAME) -> dict[str, Any]:
    """Write both peers' files and the id map under ``out``; assert 0 differing targets."""
    out = Path(out)
    split = split_from_datamodule(dm)
    rc = out / "rechorus" / name
    rb = out / "recbole" / name
    files = write_rechorus(split, rc) + write_recbole(split, rb, name, max_len)
    checks = {}
    for stage, rc_stage in (("test", "test"), ("valid", "dev")):
        checks[f"rechorus_{stage}_differing"] = count_differing(split, read_rechorus_targets(rc, rc_stage), stage)
        checks[f"recbole_{stage}_differing"] = count_differing(split, read_recbole_targets(rb, name, stage), stage)
    bad = {k: v for k, v in checks.items() if v}
    assert not bad, f"exported targets differ from the zoo datamodule's: {bad}"
    id_map = {"name": name, "max_len": max_len, "num_items": int(dm.data.num_items),
              "users": [{"zoo": int(u), "original": str(user_ids[u]), "rechorus": int(u) + 1, "recbole": str(int(u))}
                        for u in split["user"]],
              "items": "RecBole tokens and ReChorus ids are the zoo's item indices 1..N"}
    atomic_write(out / "id_map.json", json.dumps(id_map, indent=1))
    fd, tmp = tempfile.mkstemp(prefix=".split.npz.", suffix=".tmp", dir=out)
    with os.fdopen(fd, "wb") as f:
        np.savez_compressed(f, user=split["user"], test_target=split["test_target"], valid_target=split["valid_target"],
                            original=np.asarray([str(user_ids[u]) for u in split["user"]]))
    os.replace(tmp, out / "split.npz")
    n_inter = int(split["ptr"][-1])
    return {"users": len(split["user"]), "items": int(dm.data.num_items), "interactions": n_inter,
            "test_targets": len(split["user"]), **checks, "files": [str(p) for p in files]}


def datamodule_from_recipe(config: str | Path, max_len: int) -> Any:
    """The recipe's data block (``data.init_args``) with ``max_len`` overridden."""
    from datamodules import SequentialDataModule

    with open(config, encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    args = dict(((cfg or {}).get("data") or {}).get("init_args") or {})
    if not args:
        raise ValueError(f"{config}: expected a data.init_args block")
    args["max_len"] = max_len
    return SequentialDataModule(**args)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder to write the peers' files into")
    p.add_argument("--config", default=str(ROOT / "recipes" / "sasrec.yaml"), help="recipe whose data block is used")
    p.add_argument("--max_len", type=int, default=20)
    a = p.parse_args(argv)
    dm = datamodule_from_recipe(a.config, a.max_len)
    dm.setup("fit")
    info = export(dm, a.out, dm.original_user_ids(), a.max_len)
    print(json.dumps({k: v for k, v in info.items() if k != "files"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
