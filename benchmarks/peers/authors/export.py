"""Write the zoo's exact leave-one-out split and text features in the authors' MIRACLE/HORAE format.

    python -m benchmarks.peers.authors.export --recipe recipes/miracle.yaml --out runs/peers/authors/data

The split comes from the zoo's own datamodule (the recipe's ``data`` block, its processed cache and
its feature cache), never re-derived: every training prefix, the validation and the test example of
each user are the datamodule's ``train_set`` / ``eval_sets``.  Files, in ``<out>/<name>/``:

``<name>.{train,valid,test}.inter``
    tab-separated, one header line, then ``user  item_seq  target`` with item ids 0-based and
    space-separated (the authors' loader adds 1 for the pad row, giving back the zoo's ids).  The
    whole history is written; the authors' loader keeps its last ``max_seq_len`` items, as the
    zoo does.  HORAE's files (``--with-time``) are ``user  item_seq  timestamp_seq  target
    target_timestamp`` (seconds), the column order of its loader.
``<name>.feat1CLS``
    the zoo's text features of items 1..N (no pad row), ``[N, D]`` float32, as a pickled plain
    tensor (the authors' loader reads it with ``pickle.load``; this is our own file).
``user_ids.json``
    the original user id of every user index in the files (ranks are keyed by it).
``export.json``
    counts, dims and a hash of each file.

After writing, the files are read back the authors' way (header skipped, ids + 1, last
``max_len`` items, left padding) and checked against the datamodule's examples: histories,
targets (the test targets in particular) and timestamps must be identical, and the features must
round-trip bit for bit; any difference raises.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.runfiles import atomic_write

SPLITS = (("train", "train"), ("valid", "val"), ("test", "test"))  # file split -> datamodule stage


def split_rows(dm: Any, stage: str) -> tuple[np.ndarray, list[np.ndarray], np.ndarray, list[np.ndarray], np.ndarray]:
    """(users, histories, targets, history times, target times) of one datamodule stage, full histories."""
    ds = dm.train_set if stage == "train" else dm.eval_sets[stage]
    if getattr(ds, "targets_end", None) is not None:
        raise ValueError("the authors' format holds one target per example: use protocol: leave_one_out")
    d = dm.data
    hist = [d.items[s:e] for s, e in zip(ds.start, ds.end)]
    times = [d.times[s:e] for s, e in zip(ds.start, ds.end)]
    return ds.user, hist, d.items[ds.end], times, d.times[ds.end]


def inter_text(users: np.ndarray, hist: list[np.ndarray], targets: np.ndarray,
               times: list[np.ndarray] | None = None, target_times: np.ndarray | None = None) -> str:
    """The ``.inter`` file: zoo item ids 1..N written 0-based, as the authors' loader expects."""
    out = io.StringIO()
    if times is None:
        head = ["user_id:token", "item_id_list:token_seq", "item_id:token"]
    else:
        head = ["user_id:token", "item_id_list:token_seq", "timestamp_list:float_seq", "item_id:token", "timestamp:float"]
    out.write("\t".join(head) + "\n")
    for i, (u, h, t) in enumerate(zip(users, hist, targets)):
        cols = [str(int(u)), " ".join(str(int(x) - 1) for x in h), str(int(t) - 1)]
        if times is not None:
            cols = cols[:2] + [" ".join(str(int(x)) for x in times[i])] + [cols[2], str(int(target_times[i]))]
        out.write("\t".join(cols) + "\n")
    return out.getvalue()


def read_inter(path: Path, max_len: int) -> dict[str, np.ndarray]:
    """Read an ``.inter`` file back the authors' way: ids + 1, last ``max_len`` items, left-padded."""
    users, seqs, targets, tseqs, ttimes = [], [], [], [], []
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        for n, line in enumerate(f, start=2):
            cols = line.rstrip("\n").split("\t")
            if len(cols) != len(header):
                raise ValueError(f"{path}:{n}: {len(cols)} columns, the header has {len(header)}")
            seq = [int(x) + 1 for x in cols[1].split(" ")][-max_len:]
            users.append(int(cols[0]))
            seqs.append([0] * (max_len - len(seq)) + seq)
            targets.append(int(cols[-2 if len(cols) == 5 else 2]) + 1)
            if len(cols) == 5:
                ts = [int(x) for x in cols[2].split(" ")][-max_len:]
                tseqs.append([0] * (max_len - len(ts)) + ts)
                ttimes.append(int(cols[4]))
    out = {"user": np.asarray(users, dtype=np.int64), "item_seq": np.asarray(seqs, dtype=np.int64).reshape(-1, max_len),
           "target": np.asarray(targets, dtype=np.int64)}
    if tseqs:
        out["time_seq"] = np.asarray(tseqs, dtype=np.int64)
        out["target_time"] = np.asarray(ttimes, dtype=np.int64)
    return out


class _TensorOnly(pickle.Unpickler):
    """Reads back a pickled plain tensor without running anything else (weights_only torch.load inside)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return torch._utils._rebuild_tensor_v2
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return lambda b: torch.load(io.BytesIO(b), weights_only=True)
        if (module, name) == ("collections", "OrderedDict"):
            import collections

            return collections.OrderedDict
        raise pickle.UnpicklingError(f"unexpected {module}.{name} in a feature file")


def read_features(path: Path) -> torch.Tensor:
    with open(path, "rb") as f:
        t = _TensorOnly(f).load()
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{path}: expected a tensor, got {type(t).__name__}")
    return t


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def export(dm: Any, out_dir: str | Path, name: str, with_time: bool = False) -> dict[str, Any]:
    """Write ``dm``'s split (after ``dm.setup()``) to ``out_dir/name`` and verify it; returns the manifest."""
    folder = Path(out_dir) / name
    if dm.protocol != "leave_one_out":
        raise ValueError(f"data.protocol is {dm.protocol!r}; the authors' format is leave_one_out only")
    text = dm.side_info().get("text")
    if text is None:
        raise ValueError("the recipe's data block has no text features (data.text_encoder / text_features)")
    N = dm.num_items
    if text.shape[0] != N + 1:
        raise ValueError(f"text features have {text.shape[0]} rows, expected {N + 1} (pad + items)")
    counts = {}
    for fsplit, stage in SPLITS:
        users, hist, targets, times, ttimes = split_rows(dm, stage)
        body = inter_text(users, hist, targets, times if with_time else None, ttimes if with_time else None)
        atomic_write(folder / f"{name}.{fsplit}.inter", body.encode("utf-8"))
        counts[fsplit] = len(users)
    feats = text[1:].to(torch.float32).contiguous().clone()  # [N, D] items 1..N, no pad row
    atomic_write(folder / f"{name}.feat1CLS", pickle.dumps(feats))
    atomic_write(folder / "user_ids.json", json.dumps(dm.original_user_ids()).encode("utf-8"))
    verify(dm, folder, name, with_time)
    seen = set()
    for fsplit, _ in SPLITS:
        seen.update(read_inter(folder / f"{name}.{fsplit}.inter", dm.max_len)["target"].tolist())
    manifest = {
        "name": name, "num_items": N, "num_users": dm.data.num_users, "text_dim": int(feats.shape[1]),
        "max_len": dm.max_len, "examples": counts, "with_time": with_time,
        "files": {p.name: _sha(p) for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")},
        "verified": "histories, targets" + (", timestamps" if with_time else "") + " and features equal the datamodule's",
    }
    atomic_write(folder / "export.json", (json.dumps(manifest, indent=1) + "\n").encode("utf-8"))
    return manifest


def verify(dm: Any, folder: Path, name: str, with_time: bool) -> None:
    """Read the files back the authors' way; raise unless they equal the datamodule's examples."""
    for fsplit, stage in SPLITS:
        path = folder / f"{name}.{fsplit}.inter"
        got = read_inter(path, dm.max_len)
        ds = dm.train_set if stage == "train" else dm.eval_sets[stage]
        want = ds[np.arange(len(ds))]
        checks = [("user", "user"), ("item_seq", "item_seq"), ("target", "target")]
        if with_time:
            checks += [("time_seq", "time_seq"), ("target_time", "target_time")]
        for key, wkey in checks:
            w = want[wkey].numpy()
            if got[key].shape != w.shape or not np.array_equal(got[key], w):
                bad = int(np.flatnonzero((got[key] != w).reshape(len(w), -1).any(1))[0]) if got[key].shape == w.shape else -1
                raise AssertionError(f"{path}: column {key} differs from the zoo's {stage} split"
                                     + (f" (first at example {bad})" if bad >= 0 else f" (shape {got[key].shape} vs {w.shape})"))
    feats = read_features(folder / f"{name}.feat1CLS")
    text = dm.side_info()["text"][1:].to(torch.float32)
    if feats.shape != text.shape or not torch.equal(feats, text):
        raise AssertionError(f"{folder / (name + '.feat1CLS')}: features differ from the zoo's feature cache")
    all_items = set()
    for fsplit, _ in SPLITS:
        r = read_inter(folder / f"{name}.{fsplit}.inter", dm.max_len)
        all_items.update(r["target"].tolist())
        all_items.update(r["item_seq"][r["item_seq"] > 0].tolist())
    if max(all_items) != dm.num_items:
        # the authors' loader sizes the catalogue as max id + 1 and asserts it equals the feature rows
        raise AssertionError(f"{folder}: the largest item id in the files is {max(all_items)}, the catalogue has {dm.num_items}")


def datamodule_from_recipe(recipe: str | Path) -> Any:
    """The recipe's datamodule (its ``data`` block), set up."""
    import yaml

    from datamodules import SequentialDataModule

    with open(recipe, encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    data = (cfg or {}).get("data") or {}
    if not str(data.get("class_path", "")).endswith("SequentialDataModule"):
        raise ValueError(f"{recipe}: data.class_path must be datamodules.SequentialDataModule, got {data.get('class_path')!r}")
    dm = SequentialDataModule(**(data.get("init_args") or {}))
    dm.setup("fit")
    return dm


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default="recipes/miracle.yaml")
    ap.add_argument("--out", default="runs/peers/authors/data")
    ap.add_argument("--name", default="ML")
    ap.add_argument("--with-time", action="store_true", help="HORAE: add the timestamp columns")
    a = ap.parse_args(argv)
    m = export(datamodule_from_recipe(a.recipe), a.out, a.name, a.with_time)
    print(json.dumps(m, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
