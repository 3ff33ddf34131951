"""Bad input end to end through the real `zoo` console script: one table, one test.

Every case runs `zoo` as a subprocess next to the outputs of earlier good runs (a processed cache,
a SASRec run directory with best/last checkpoints and logs), pointing the
failing run at the SAME cache folder and run directory.  Each case must

(a) exit non-zero,
(b) print exactly one ``zoo: error`` line on stderr that names the problem (the key, file, line,
    filter or loss term) and no Python traceback,
(c) leave every file that was on disk before byte-identical (SHA-256 before/after),
(d) never run code from a file it reads: the malicious pickles below create ``PWNED`` in the
    case's scratch folder when unpickled, and that file must not exist afterwards.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import pickle
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from conftest import write_movielens_latest
from test_cli import tiny_data_args, zoo

TINY_SASREC = ["--model.init_args.d", "16", "--model.init_args.max_len", "10"]
SHORT_FIT = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2"]


@dataclass
class World:
    """The files of the earlier good runs (everything under ``root`` is protected)."""

    root: Path
    ml: Path  # raw GroupLens folder
    cache: Path  # processed caches
    run: Path  # SASRec run directory (best.ckpt, last.ckpt, logs)
    num_items: int
    scratch: Path  # per-case folder for the bad inputs (outside root)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("good")
    ml = write_movielens_latest(root / "ml")
    cache, run = root / "cache", root / "sasrec"
    r = zoo("fit", "--config", "recipes/sasrec.yaml", *tiny_data_args(ml, cache), *TINY_SASREC, *SHORT_FIT,
            "--test_after_fit", "false", "--run_dir", str(run))
    assert r.returncode == 0, r.stderr[-3000:]
    assert (run / "best.ckpt").is_file() and (run / "last.ckpt").is_file()
    (stats,) = cache.glob("*/stats.json")
    num_items = json.loads(stats.read_text())["num_items"]
    return World(root, ml, cache, run, num_items, root)


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def sasrec(w: World, *extra: str, subcommand: str = "fit", data: Path | None = None) -> list[str]:
    """A tiny SASRec command on ``data`` (default: the good raw folder), writing into the good run dir
    (a fit with ``--overwrite true``: it may replace the finished run, but only once it checkpoints)."""
    replace_run = ["--overwrite", "true"] if subcommand == "fit" else []
    return [subcommand, "--config", "recipes/sasrec.yaml", *tiny_data_args(data or w.ml, w.cache), *TINY_SASREC,
            "--run_dir", str(w.run), *replace_run, *extra]


def miracle(w: World, *extra: str) -> list[str]:
    """MIRACLE (reads item text features) from scratch, tiny, on the good raw folder."""
    return ["fit", "--config", "recipes/miracle.yaml", *tiny_data_args(w.ml, w.cache),
            "--data.init_args.text_encoder", "null", "--model.init_args.pretrained_ckpt", "null",
            "--model.init_args.freeze", "[]", "--model.init_args.d", "16", "--model.init_args.d_ff", "32",
            "--model.init_args.max_len", "10", "--model.init_args.num_capsules", "4", *SHORT_FIT,
            "--run_dir", str(w.run), "--overwrite", "true", *extra]


# ------------------------------------------------------------------------------- bad inputs
def recipe_file(w: World, text: str) -> list[str]:
    path = w.scratch / "recipe.yaml"
    path.write_text(text)
    return sasrec(w, "--config", str(path))


def corrupt_ratings(w: World) -> list[str]:
    bad = write_movielens_latest(w.scratch / "ml-bad")
    lines = (bad / "ratings.csv").read_text().splitlines()
    user, item, _, ts = lines[49].split(",")
    lines[49] = f"{user},{item},four,{ts}"  # line 50 of the file (1-based, header = line 1)
    (bad / "ratings.csv").write_text("\n".join(lines) + "\n")
    return sasrec(w, data=bad)


def truncated_gz(w: World) -> list[str]:
    """Amazon 2018 ratings CSV + a gzipped metadata file cut in the middle of its stream."""
    folder = w.scratch / "amazon"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = [f"B{it:09d},U{u:05d},5.0,{1_500_000_000 + 86400 * (u + j)}"
            for u in range(30) for j, it in enumerate(rng.choice(40, 8, replace=False))]
    (folder / "Toys.csv").write_text("\n".join(rows) + "\n")
    meta = "".join(json.dumps({"asin": f"B{i:09d}", "title": f"Toy {i} {rng.integers(10**12)}", "brand": "Acme",
                               "category": ["Toys", f"Kind {i % 7}"]}) + "\n" for i in range(40))
    blob = gzip.compress(meta.encode())
    (folder / "meta_Toys.json.gz").write_bytes(blob[: len(blob) // 2])
    return [*sasrec(w), "--data.init_args.format", "amazon2018", "--data.init_args.paths",
            json.dumps({"ratings": str(folder / "Toys.csv"), "meta": str(folder / "meta_Toys.json.gz")})]


def feature_file(w: World, rows: int, dim: int, nan: bool = False) -> Path:
    table = np.random.default_rng(0).normal(size=(rows, dim)).astype(np.float32)  # [N+1, D]
    table[0] = 0.0
    if nan:
        table[5, 3] = np.nan
    path = w.scratch / f"text_{rows}x{dim}{'_nan' if nan else ''}.npy"
    np.save(path, table)
    return path


def other_item_count(w: World) -> list[str]:
    other = write_movielens_latest(w.scratch / "ml-80", n_items=80, seed=1)
    return sasrec(w, "--ckpt_path", str(w.run / "best.ckpt"), subcommand="test", data=other)


def truncated_ckpt(w: World) -> list[str]:
    path = w.scratch / "cut.ckpt"
    path.write_bytes((w.run / "best.ckpt").read_bytes()[:300])
    return sasrec(w, "--ckpt_path", str(path), subcommand="test")


# ------------------------------------------------------------------- files that would run code
class Payload:
    """Unpickling this calls ``open(marker, "w")``: the marker file proves the code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def marker(w: World) -> Path:
    return w.scratch / "PWNED"


def evil_torch(w: World, name: str, tensors: dict | None = None) -> Path:
    """A torch.save zip whose pickle also holds the payload (a 'checkpoint' from a stranger)."""
    path = w.scratch / name
    state = tensors if tensors is not None else torch.load(w.run / "best.ckpt", map_location="cpu", weights_only=True)
    torch.save({**state, "extra": Payload(marker(w))}, path)
    return path


def evil_raw_pickle(w: World, name: str) -> Path:
    path = w.scratch / name
    path.write_bytes(pickle.dumps({"state_dict": {}, "x": Payload(marker(w))}, protocol=4))
    return path


def evil_feature_tensor(w: World, name: str) -> Path:
    """The authors' pickled-tensor .feat1CLS / a .pt, with the payload beside the tensor."""
    path = w.scratch / name
    torch.save([torch.zeros(w.num_items, 24), Payload(marker(w))], path)
    return path


def evil_npy(w: World) -> Path:
    path = w.scratch / "text.npy"
    np.save(path, np.array([Payload(marker(w))], dtype=object), allow_pickle=True)
    return path


def evil_cache(w: World) -> list[str]:
    """A copy of the good processed cache whose arrays.npz holds a pickled object array."""
    cache = w.scratch / "cache"
    shutil.copytree(w.cache, cache)
    for folder in [p for p in cache.iterdir() if (p / "stats.json").is_file()]:
        with np.load(folder / "arrays.npz") as z:
            arrays = {k: z[k] for k in z.files}
        arrays["items"] = np.array([Payload(marker(w))], dtype=object)
        np.savez(folder / "arrays.npz", **arrays)
    return ["fit", "--config", "recipes/sasrec.yaml", *tiny_data_args(w.ml, cache), *TINY_SASREC, *SHORT_FIT,
            "--run_dir", str(w.scratch / "run")]


def evil_last(w: World) -> list[str]:
    """`--ckpt_path last` in a run folder whose last.ckpt is the stranger's file."""
    run = w.scratch / "run"
    run.mkdir()
    shutil.copy(w.run / "best.ckpt", run / "best.ckpt")
    evil_torch(w, "run/last.ckpt")
    return ["fit", "--config", "recipes/sasrec.yaml", *tiny_data_args(w.ml, w.cache), *TINY_SASREC, *SHORT_FIT,
            "--run_dir", str(run), "--ckpt_path", "last"]


UNSAFE = ["can only be read by full unpickling", "zoo ckpt convert --trust-pickle"]


@dataclass
class Case:
    id: str
    args: Callable[[World], list[str]]
    expect: Callable[[World], list[str]]  # substrings (or r"re:" patterns) of the one error line


CASES = [
    Case("recipe_bad_yaml", lambda w: recipe_file(w, "model:\n  class_path: zoo.models.sasrec.SASRec\n  init_args: {d: 16\n"),
         lambda w: ["recipe.yaml", "not valid YAML", "line 3"]),
    Case("recipe_unknown_key", lambda w: recipe_file(w, "model:\n  init_args:\n    d_model: 16\n"),
         lambda w: ["'d_model'", "not accepted"]),
    Case("recipe_wrong_type", lambda w: recipe_file(w, "model:\n  init_args:\n    d: sixteen\n"),
         lambda w: ['"d"', "int", "sixteen"]),
    Case("recipe_monitor_not_logged", lambda w: sasrec(w, "--monitor", "val/recall@500", *SHORT_FIT),
         lambda w: ["monitor: 'val/recall@500' is not a metric this model logs", "val/recall@50"]),
    Case("data_path_missing", lambda w: sasrec(w, data=w.scratch / "nowhere"),
         lambda w: [str(w.scratch / "nowhere"), "not found"]),
    Case("raw_malformed_line", corrupt_ratings,
         lambda w: ["ml-bad/ratings.csv", "line 50", "column 'rating'", "four"]),
    Case("raw_truncated_gz", truncated_gz,
         lambda w: ["meta_Toys.json.gz", "truncated or corrupt"]),
    Case("features_wrong_rows", lambda w: miracle(w, "--data.init_args.text_features", str(feature_file(w, 30, 24))),
         lambda w: ["text_30x24.npy", f"expected {w.num_items + 1} rows", "got 30"]),
    Case("features_wrong_dim", lambda w: miracle(w, "--data.init_args.text_features",
                                                 str(feature_file(w, w.num_items + 1, 24)), "--data.init_args.text_dim", "32"),
         lambda w: [f"text_{w.num_items + 1}x24.npy", "expected feature dim 32"]),
    Case("features_nan", lambda w: miracle(w, "--data.init_args.text_features",
                                           str(feature_file(w, w.num_items + 1, 24, nan=True))),
         lambda w: ["_nan.npy", "1 NaN/inf"]),
    Case("ckpt_other_model", lambda w: ["test", "--config", "recipes/gru4rec.yaml", *tiny_data_args(w.ml, w.cache),
                                        "--ckpt_path", str(w.run / "best.ckpt"), "--run_dir", str(w.run)],
         lambda w: [str(w.run / "best.ckpt"), "is a checkpoint of zoo.models.sasrec.SASRec", "builds zoo.models.gru4rec.GRU4Rec"]),
    Case("ckpt_other_item_count", other_item_count,
         lambda w: [str(w.run / "best.ckpt"), "size mismatch", f"item_emb.weight is [{w.num_items + 1}, 16] in the checkpoint"]),
    Case("ckpt_truncated", truncated_ckpt, lambda w: ["cut.ckpt", "not a readable Lightning checkpoint"]),
    Case("empty_after_k_core", lambda w: sasrec(w, "--data.init_args.k_core", "100"),
         lambda w: ["100-core filtering", "removed all", "data.k_core"]),
    Case("unsafe_pretrained_ckpt", lambda w: sasrec(w, *SHORT_FIT, "--model.init_args.pretrained_ckpt",
                                                    str(evil_torch(w, "downloaded.ckpt"))),
         lambda w: ["model.init_args.pretrained_ckpt", "downloaded.ckpt", *UNSAFE, "it asks for io.open"]),
    Case("unsafe_pretrained_raw_pickle", lambda w: sasrec(w, *SHORT_FIT, "--model.init_args.pretrained_ckpt",
                                                          str(evil_raw_pickle(w, "raw.pkl"))),
         lambda w: ["model.init_args.pretrained_ckpt", "raw.pkl", *UNSAFE]),
    Case("unsafe_ckpt_path", lambda w: sasrec(w, "--ckpt_path", str(evil_torch(w, "evil.ckpt")), subcommand="test"),
         lambda w: ["--ckpt_path", "evil.ckpt", *UNSAFE]),
    Case("unsafe_ckpt_path_last", evil_last, lambda w: ["--ckpt_path", *UNSAFE]),
    Case("unsafe_weights_only_false", lambda w: sasrec(w, "--ckpt_path", str(w.run / "best.ckpt"), "--weights_only",
                                                       "false", subcommand="test"),
         lambda w: ["--weights_only false", "zoo ckpt convert --trust-pickle"]),
    Case("unsafe_feat1cls_tensor", lambda w: miracle(w, "--data.init_args.text_features",
                                                     str(evil_feature_tensor(w, "Scientific.feat1CLS"))),
         lambda w: ["feature file", "Scientific.feat1CLS", *UNSAFE]),
    Case("unsafe_feat1cls_raw_pickle", lambda w: miracle(w, "--data.init_args.text_features",
                                                         str(evil_raw_pickle(w, "Office.feat1CLS"))),
         lambda w: ["Office.feat1CLS", *UNSAFE, "a Python pickle"]),
    Case("unsafe_features_pt", lambda w: miracle(w, "--data.init_args.text_features",
                                                 str(evil_feature_tensor(w, "text.pt"))),
         lambda w: ["text.pt", *UNSAFE]),
    Case("unsafe_features_npy", lambda w: miracle(w, "--data.init_args.text_features", str(evil_npy(w))),
         lambda w: ["text.npy", *UNSAFE]),
    Case("unsafe_cache", evil_cache, lambda w: ["arrays.npz", "pickled objects", "delete the folder"]),
    Case("unsafe_recipe_tag", lambda w: recipe_file(
        w, f"model:\n  init_args:\n    d: !!python/object/apply:builtins.open ['{w.scratch / 'PWNED'}', 'w']\n"),
         lambda w: ["recipe.yaml"]),
    Case("loss_becomes_nan", lambda w: sasrec(w, "--model.init_args.lr", "1e30", "--trainer.limit_train_batches", "8"),
         lambda w: [r"re:training loss became non-finite at step \d+: rec=(nan|inf|-inf)"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_cleanly(case: Case, world: World, tmp_path):
    world = replace(world, scratch=tmp_path)  # bad inputs live outside the protected root
    args = case.args(world)
    before = snapshot(world.root)
    r = zoo(*args, timeout=300)
    after = snapshot(world.root)
    assert r.returncode != 0, f"{case.id}: exited 0\n{r.stdout[-2000:]}"
    assert "Traceback" not in r.stderr, r.stderr[-4000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("zoo: error")]
    assert len(errors) == 1, r.stderr[-4000:]
    for want in case.expect(world):
        if want.startswith("re:"):
            assert re.search(want[3:], errors[0]), f"{case.id}: /{want[3:]}/ not in {errors[0]!r}"
        else:
            assert want in errors[0], f"{case.id}: {want!r} not in {errors[0]!r}"
    changed = sorted(k for k in before if after.get(k) != before[k])
    assert not changed, f"{case.id}: files on disk changed or vanished: {changed}"
    assert not (tmp_path / "PWNED").exists(), f"{case.id}: code inside a file ran"
    assert not (world.run / ".zoo.lock").exists(), f"{case.id}: run-folder lock left behind"
