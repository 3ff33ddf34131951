"""End to end: after tiny `zoo fit` runs the run folders hold per-user ranks whose means are the
logged test metrics (full ranking, and through `zoo test` sampled negatives and multi-target,
the latter also on 2 CPU processes with gloo: identical ranks), and `zoo compare` on two runs
prints CIs and a p-value.  One fixture of two tiny fits serves every test."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from test_cli import tiny_data_args, tiny_sasrec_fit, zoo

from zoo.ranks import load_ranks, per_user
from zoo.runfiles import ranks_path_for


@pytest.fixture(scope="module")
def fits(ml_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("fits")
    tiny_sasrec_fit(ml_folder, out, "sasrec")
    tiny_sasrec_fit(ml_folder, out, "sasrec_small", "--model.init_args.d", "8", "--seed_everything", "1")
    return out


def newest_test_metrics(*folders: Path, since: float) -> Path:
    """The metrics file a `zoo test` just wrote (test_metrics.json, or test-<stamp>.json beside the checkpoint)."""
    found = [p for f in folders for p in [*f.glob("test_metrics.json"), *f.glob("test-*.json")] if p.stat().st_mtime >= since]
    assert found, f"no test metrics written in {folders}"
    return max(found, key=lambda p: p.stat().st_mtime)


def assert_ranks_match_metrics(metrics_file: Path, protocol: str):
    r = load_ranks(ranks_path_for(metrics_file))
    logged = json.loads(metrics_file.read_text())["test"]
    assert r.protocol == protocol and r.num_users > 0
    assert {f"test/{m}" for m in r.metric_names()} == set(logged)
    for m in r.metric_names():
        assert per_user(r, m).mean() == pytest.approx(logged[f"test/{m}"], abs=1e-6), (protocol, m)
    return r


def test_fit_writes_ranks_of_every_test_user(fits, ml_folder):
    r = assert_ranks_match_metrics(fits / "sasrec" / "test_metrics.json", "full")
    users = {line.split(",")[0] for line in (ml_folder / "ratings.csv").read_text().splitlines()[1:]}
    assert set(r.user_id) == users  # leave-one-out: every user, by the publisher's id
    assert 0 < r.rank.max() < r.n_candidates <= 60  # ranked among the items left after the k-core filter
    assert 0 < per_user(r, "hr@10").mean() < 1


def test_zoo_test_ranks_sampled_and_multi_target_and_ddp(fits, ml_folder, tmp_path):
    ckpt = fits / "sasrec" / "best.ckpt"
    base = ["test", "--config", "recipes/sasrec.yaml", *tiny_data_args(ml_folder, fits / "cache"),
            "--model.init_args.d", "16", "--model.init_args.max_len", "10", "--ckpt_path", str(ckpt)]
    t0 = time.time() - 1
    r = zoo(*base, "--data.init_args.eval_negatives", "20", "--run_dir", str(tmp_path / "sampled"))
    assert r.returncode == 0, r.stderr[-3000:]
    sampled = assert_ranks_match_metrics(newest_test_metrics(tmp_path / "sampled", fits / "sasrec", since=t0), "sampled")
    assert sampled.n_candidates == 21 and sampled.rank.max() <= 20

    multi = [*base, "--data.init_args.protocol", "user_split", "--data.init_args.eval_batch_size", "1",
             "--trainer.accelerator", "cpu"]
    t1 = time.time() - 1
    one = zoo(*multi, "--run_dir", str(tmp_path / "m1"))
    assert one.returncode == 0, one.stderr[-3000:]
    m1 = newest_test_metrics(tmp_path / "m1", fits / "sasrec", since=t1)
    r1 = assert_ranks_match_metrics(m1, "multi")
    assert (r1.n_targets >= np.diff(r1.offsets)).all() and r1.num_users >= 2
    t2 = time.time() - 1
    two = zoo(*multi, "--trainer.devices", "2", "--trainer.strategy", "ddp", "--run_dir", str(tmp_path / "m2"))
    assert two.returncode == 0, two.stderr[-3000:]
    m2 = newest_test_metrics(tmp_path / "m2", fits / "sasrec", since=t2)
    assert m2 != m1
    r2 = assert_ranks_match_metrics(m2, "multi")
    for key in ("user_id", "rank", "offsets", "n_targets"):  # gathered from both processes, in order
        assert np.array_equal(getattr(r1, key), getattr(r2, key)), key


def test_zoo_compare_prints_cis_and_a_p_value(fits, tmp_path):
    r = zoo("compare", str(fits / "sasrec"), str(fits / "sasrec_small"), "--n-boot", "2000",
            "--metrics", "ndcg@10", "hr@20", "--out", str(tmp_path / "cmp"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| sasrec_small | 1 (single seed) | " in r.stdout or "| **sasrec_small** (reference)" in r.stdout
    assert "] p=" in r.stdout and "p_Holm=" in r.stdout  # a CI of the difference, then its p-value
    for name in ("compare.md", "compare.csv", "compare.png"):
        assert (tmp_path / "cmp" / name).is_file(), name
    bad = zoo("compare", str(fits / "sasrec"), str(tmp_path), "--out", str(tmp_path / "x"))
    assert bad.returncode == 1 and "no test_metrics.json" in bad.stderr
