"""Run folders, concurrency, the trusted-conversion way out, and hostile raw data.

Through the real ``zoo`` console script: a fit refuses a finished run folder; test/predict write
stamped files beside their checkpoint and never touch the fit's files; ``--run DIR`` reads the
run's saved config; two concurrent fits share an uncached dataset safely and cannot share a run
folder; a failed fit leaves no folder.  (The malicious-pickle cases live in test_faults.py's table.)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_movielens_latest
from test_cli import ROOT, ZOO, tiny_data_args, tiny_sasrec_fit, zoo

from datamodules.raw import DataFormatError
from zoo.runfiles import RunFolderBusy, RunLock, ranks_path_for, stamped_path, write_new

QUICK = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2",
         "--model.init_args.d", "16", "--model.init_args.max_len", "10"]


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "logs" not in p.parts}


def one_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode != 0, r.stdout[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = [x for x in r.stderr.splitlines() if x.startswith("zoo: error")]
    assert len(errors) == 1, r.stderr[-3000:]
    return errors[0]


@pytest.fixture(scope="module")
def fitted(ml_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    tiny_sasrec_fit(ml_folder, out, "sasrec")
    return out, out / "sasrec"


# ------------------------------------------------------------------------------ unit: names
def test_ranks_path_and_stamped_names(tmp_path):
    assert ranks_path_for(tmp_path / "test_metrics.json") == tmp_path / "ranks.npz"
    assert ranks_path_for(tmp_path / "test-20261130-011741.json") == tmp_path / "ranks-20261130-011741.npz"
    assert ranks_path_for(tmp_path / "test-20261130-011741-2.json") == tmp_path / "ranks-20261130-011741-2.npz"
    now = time.mktime((2026, 11, 30, 1, 17, 41, 0, 0, -1))
    first = stamped_path(tmp_path, "test-", ".json", now=now)
    assert first.name == "test-20261130-011741.json"
    first.write_text("{}")
    assert stamped_path(tmp_path, "test-", ".json", now=now).name == "test-20261130-011741-1.json"
    (tmp_path / "ranks-20261130-011741-1.npz").write_bytes(b"")  # a ranks file alone also takes the stamp
    assert stamped_path(tmp_path, "test-", ".json", now=now).name == "test-20261130-011741-2.json"
    a, b = write_new(tmp_path, "x-", ".json", "a"), write_new(tmp_path, "x-", ".json", "b")
    assert a != b and a.read_text() == "a" and b.read_text() == "b"
    assert not list(tmp_path.glob(".*tmp"))


def hold_lock(folder: Path) -> subprocess.Popen:
    """Another process holding ``folder``'s run lock (as a running fit does)."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from zoo.runfiles import RunLock; "
                               "RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(120)", str(folder)],
                              stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_run_lock_busy_then_stale(tmp_path):
    """A live holder -> RunFolderBusy naming its pid; once it is killed, the lock is taken over."""
    holder = hold_lock(tmp_path)
    try:
        with pytest.raises(RunFolderBusy, match=f"pid {holder.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / ".zoo.lock").exists()  # left by the killed process: stale
    lock = RunLock(tmp_path).acquire()
    lock.release()
    assert not (tmp_path / ".zoo.lock").exists()


# ------------------------------------------------------------------------ outputs of a fit
def test_fit_checkpoints_load_weights_only_and_config_saved(fitted):
    _, run = fitted
    for name in ("best.ckpt", "last.ckpt"):
        ckpt = torch.load(run / name, map_location="cpu", weights_only=True)  # no pickled objects in our own files
        assert "state_dict" in ckpt and "callbacks" in ckpt
    assert "class_path: zoo.models.sasrec.SASRec" in (run / "config.yaml").read_text()
    assert not (run / ".zoo.lock").exists()


def test_fit_refuses_a_finished_run(fitted, ml_folder):
    out, run = fitted
    before = digest(run)
    r = zoo("fit", "--config", "recipes/sasrec.yaml", *tiny_data_args(ml_folder, out / "cache"), *QUICK,
            "--run_dir", str(run))
    msg = one_error(r)
    assert "already holds a run" in msg and "--overwrite true" in msg and "--ckpt_path last" in msg
    assert digest(run) == before


def test_overwrite_replaces_a_finished_run(fitted, ml_folder, tmp_path):
    """`--overwrite true` is the explicit way to fit again into a finished run's folder: the new run's
    files replace the old ones (test_metrics.json holds the new config)."""
    out, run = fitted
    again = tmp_path / "again"
    shutil.copytree(run, again)
    old = json.loads((again / "test_metrics.json").read_text())
    r = zoo("fit", "--config", "recipes/sasrec.yaml", *tiny_data_args(ml_folder, out / "cache"), *QUICK,
            "--model.init_args.lr", "0.0005", "--run_dir", str(again), "--overwrite", "true")
    assert r.returncode == 0, r.stderr[-3000:]
    new = json.loads((again / "test_metrics.json").read_text())
    assert new["config"]["model"]["init_args"]["lr"] == 0.0005 != old["config"]["model"]["init_args"]["lr"]
    assert new["epochs"] == 1 and not (again / ".zoo.lock").exists()
    assert "lr: 0.0005" in (again / "config.yaml").read_text()


def test_test_and_predict_write_stamped_files_beside_the_checkpoint(fitted, ml_folder, tmp_path):
    out, run = fitted
    before = digest(run)
    r1 = zoo("test", "--run", str(run))
    r2 = zoo("test", "--run", str(run))
    assert r1.returncode == 0 and r2.returncode == 0, r1.stderr[-3000:] + r2.stderr[-3000:]
    # from another working directory, with the recipe: the outputs go beside the checkpoint, not to runs/sasrec
    r3 = zoo("test", "--config", str(ROOT / "recipes/sasrec.yaml"), *tiny_data_args(ml_folder, out / "cache"),
             "--model.init_args.d", "16", "--model.init_args.max_len", "10", "--ckpt_path", str(run / "best.ckpt"),
             cwd=tmp_path)
    assert r3.returncode == 0, r3.stderr[-3000:]
    assert not (tmp_path / "runs").exists()
    tests = sorted(run.glob("test-*.json"))
    assert len(tests) == 3, tests
    assert all(json.loads(p.read_text())["test"]["test/recall@10"] >= 0 for p in tests)
    # the same checkpoint on the same data: the same numbers as the fit's own test
    fit_test = json.loads((run / "test_metrics.json").read_text())["test"]
    assert json.loads(tests[0].read_text())["test"]["test/ndcg@10"] == pytest.approx(fit_test["test/ndcg@10"])
    r4 = zoo("predict", "--run", str(run))
    assert r4.returncode == 0, r4.stderr[-3000:]
    (pred,) = run.glob("predictions-*.csv")
    assert pred.read_text().startswith("user,items,scores")
    after = digest(run)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing the fit wrote changed


def test_run_flag_needs_a_run_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    msg = one_error(zoo("test", "--run", str(tmp_path / "empty")))
    assert "no config.yaml" in msg and "empty" in msg
    msg = one_error(zoo("fit", "--run", str(tmp_path / "empty")))
    assert "--run DIR is an option of `zoo test`" in msg


def test_failed_fit_leaves_no_folder(ml_folder, tmp_path):
    msg = one_error(zoo("fit", "--config", "recipes/sasrec.yaml", *tiny_data_args(tmp_path / "nowhere", tmp_path / "c"),
                        *QUICK, "--run_dir", str(tmp_path / "run")))
    assert "nowhere" in msg
    assert not (tmp_path / "run").exists()
    msg = one_error(zoo("fit", "--config", "recipes/sasrec.yaml", *tiny_data_args(ml_folder, tmp_path / "c"), *QUICK,
                        "--model.init_args.lr", "1e30", "--trainer.limit_train_batches", "8", "--run_dir",
                        str(tmp_path / "nan")))
    assert "non-finite" in msg
    assert not (tmp_path / "nan").exists()


# ----------------------------------------------------------------------------- concurrency
def test_concurrent_fits_share_an_uncached_dataset_but_not_a_run_folder(ml_folder, tmp_path):
    """A and B start together on a dataset nobody has processed (same cache folder); C points at A's
    run folder while A runs and must be refused.  A and B finish with identical data statistics."""
    cache = tmp_path / "cache"
    env = dict(os.environ, PYTHONUNBUFFERED="1")

    def start(name: str) -> subprocess.Popen:
        return subprocess.Popen([ZOO, "fit", "--config", "recipes/sasrec.yaml", *tiny_data_args(ml_folder, cache), *QUICK,
                                 "--test_after_fit", "false", "--run_dir", str(tmp_path / name)],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    a, b = start("a"), start("b")
    deadline = time.time() + 120
    while not (tmp_path / "a" / ".zoo.lock").exists() and a.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    c = start("a") if a.poll() is None else None
    outs = {k: p.communicate(timeout=300) for k, p in (("a", a), ("b", b), ("c", c)) if p is not None}
    assert a.returncode == 0 and b.returncode == 0, outs["a"][1][-3000:] + outs["b"][1][-3000:]
    if c is not None:  # C reached its check while A held the folder (busy) or after A finished (a finished run)
        assert c.returncode != 0, outs["c"][0][-3000:]
        assert re.search(r"is in use by another zoo process \(pid \d+|already holds a run", outs["c"][1]), outs["c"][1][-3000:]
    (dataset,) = [p for p in cache.iterdir()]  # one processed cache, no temp folders left
    assert (dataset / "stats.json").is_file()
    assert (tmp_path / "a" / "last.ckpt").is_file() and not (tmp_path / "a" / ".zoo.lock").exists()
    torch.load(tmp_path / "a" / "last.ckpt", map_location="cpu", weights_only=True)


def test_fit_into_a_folder_in_use_is_refused(ml_folder, tmp_path):
    """Deterministic form of the race above: the folder is held while `zoo fit` starts."""
    run = tmp_path / "run"
    holder = hold_lock(run)
    try:
        msg = one_error(zoo("fit", "--config", "recipes/sasrec.yaml", *tiny_data_args(ml_folder, tmp_path / "c"), *QUICK,
                            "--run_dir", str(run)))
    finally:
        holder.kill()
        holder.wait()
    assert f"is in use by another zoo process (pid {holder.pid}" in msg
    assert [p.name for p in run.iterdir()] == [".zoo.lock"]  # nothing written beside the holder's lock
    assert not (tmp_path / "c").exists()  # refused before any data was read


# -------------------------------------------------------------------- zoo ckpt convert
def test_ckpt_convert_trusted_legacy_file(fitted, ml_folder, tmp_path):
    out, run = fitted
    sd = torch.load(run / "best.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    legacy = tmp_path / "legacy.ckpt"
    torch.save({"state_dict": sd, "hyper_parameters": argparse.Namespace(d=16, note=np.float64(0.5)),
                "table": np.ones((2, 3), np.float32)}, legacy)
    with pytest.raises(Exception):
        torch.load(legacy, weights_only=True)
    converted = tmp_path / "converted.ckpt"
    r = zoo("ckpt", "convert", str(legacy), str(converted))
    assert r.returncode == 2 and "--trust-pickle" in r.stderr and not converted.exists()
    r = zoo("ckpt", "convert", "--trust-pickle", str(legacy), str(converted))
    assert r.returncode == 0, r.stderr[-2000:]
    safe = torch.load(converted, map_location="cpu", weights_only=True)
    assert safe["hyper_parameters"] == {"d": 16, "note": 0.5}
    assert torch.equal(safe["table"], torch.ones(2, 3))
    assert all(torch.equal(safe["state_dict"][k], v) for k, v in sd.items())
    r = zoo("ckpt", "convert", "--trust-pickle", str(legacy), str(converted))  # never over an existing file
    assert r.returncode == 1 and "already exists" in r.stderr
    r = zoo("fit", "--config", "recipes/sasrec.yaml", *tiny_data_args(ml_folder, out / "cache"), *QUICK,
            "--test_after_fit", "false", "--model.init_args.pretrained_ckpt", str(converted),
            "--run_dir", str(tmp_path / "fine"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "loaded pre-trained weights" in r.stdout


# ----------------------------------------------------------------------- hostile raw data
def ratings_with(tmp_path: Path, line: int, text: str | bytes) -> Path:
    """The tiny MovieLens folder with ratings.csv's 1-based ``line`` replaced."""
    folder = write_movielens_latest(tmp_path / "ml")
    lines = (folder / "ratings.csv").read_bytes().split(b"\n")
    lines[line - 1] = text if isinstance(text, bytes) else text.encode()
    (folder / "ratings.csv").write_bytes(b"\n".join(lines))
    return folder


def read(folder: Path):
    from datamodules.formats import read_raw

    return read_raw("movielens", path=str(folder))


@pytest.mark.parametrize("text, expect", [
    (b"1,\xff\xfe7,4.0,1000000000", ["line 21", "utf-8-encoded text"]),
    ("1,7,4.0,-5", ["line 21", "from 1970-01-01 to 2100-01-01", "timestamp -5"]),
    ("1,7,4.0,1500000000000", ["line 21", "milliseconds"]),
    ("1,7,4.0,99999999999999999999", ["line 21", "an integer in column 'timestamp'"]),
    ("1," + "9" * 10_000_000, ["line 21", "column 'rating'", "..."]),
], ids=["non_utf8", "negative_ts", "ms_ts", "int64_overflow", "10MB_line"])
def test_hostile_raw_line_is_named(tmp_path, text, expect):
    with pytest.raises(DataFormatError) as e:
        read(ratings_with(tmp_path, 21, text))
    msg = str(e.value)
    assert len(msg) < 600 and "\n" not in msg, msg  # the 10 MB line is shown cut, not whole
    for want in expect:
        assert want in msg, msg


def test_hostile_ids_and_empty_file(tmp_path):
    """Ids are opaque strings: a quoted id with the separator or a newline is kept verbatim; a 0-byte
    ratings file is an error naming it."""
    folder = ratings_with(tmp_path, 21, '"1,x",7,4.0,1000000000\n"2\ny",8,4.0,1000000001')
    raw = read(folder)
    users = set(raw.interactions["user"])
    assert {"1,x", "2\ny"} <= users
    (folder / "ratings.csv").write_bytes(b"")
    with pytest.raises(DataFormatError, match="ratings.csv: expected a non-empty file"):
        read(folder)


def test_10mb_line_memory_is_bounded(tmp_path):
    """A 10 MB line costs about what a 10 MB file costs (peak traced memory < 20x the file)."""
    import tracemalloc

    folder = ratings_with(tmp_path, 21, "1,7,4.0," + "1" * 10_000_000)
    size = (folder / "ratings.csv").stat().st_size
    tracemalloc.start()
    with pytest.raises(DataFormatError):
        read(folder)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20 * size, (peak, size)
