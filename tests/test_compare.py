"""zoo compare's statistics on fixed inputs against SciPy and hand-computed values, and the table on
synthetic run folders (grouping of seeds, default reference, same-users check, files written)."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest
from scipy import stats

from zoo.experiments.compare import (bootstrap_means, compare_runs, holm, main, percentile_ci, sign_flip_test,
                                     write_table)
from zoo.ranks import Ranks, per_user, save_ranks


# ----------------------------------------------------------------------------- golden statistics
def test_bootstrap_ci_equals_scipy_percentile_bootstrap():
    x = np.random.default_rng(1).random(57) ** 3
    for batch in (None, 64):  # scipy draws the same resamples when its batch equals ours
        ours = percentile_ci(bootstrap_means(x, 1000, np.random.default_rng(7), batch=batch or 1000))
        ref = stats.bootstrap((x,), np.mean, n_resamples=1000, batch=batch, method="percentile",
                              rng=np.random.default_rng(7)).confidence_interval
        assert ours[0][0] == pytest.approx(ref.low, abs=1e-12) and ours[1][0] == pytest.approx(ref.high, abs=1e-12)


def test_bootstrap_by_hand():
    """Two users valued 0 and 1: a resample's mean is 0, 1/2 or 1 with chances 1/4, 1/2, 1/4."""
    theta = bootstrap_means(np.array([0.0, 1.0]), 20000, np.random.default_rng(0))[:, 0]
    assert set(np.unique(theta)) == {0.0, 0.5, 1.0}
    assert np.mean(theta == 0.5) == pytest.approx(0.5, abs=0.02)
    lo, hi = percentile_ci(theta[:, None])
    assert (lo[0], hi[0]) == (0.0, 1.0)
    const = bootstrap_means(np.full(9, 0.25), 100, np.random.default_rng(0))
    assert np.all(const == 0.25)


def test_sign_flip_p_values_by_hand():
    # d = (1, 2, 3): the 8 sign vectors give sums 6, 4, 2, 0, 0, -2, -4, -6; P(T >= 6) = 1/8, two-sided 2/8
    assert sign_flip_test(np.array([1.0, 2.0, 3.0]), 10000, None)[0] == pytest.approx(0.25, abs=1e-15)
    # d = (1, 2, 3, 4): only all + reaches 10 of 16; two-sided 2/16
    assert sign_flip_test(np.array([1.0, 2.0, 3.0, 4.0]), 10000, None)[0] == pytest.approx(0.125, abs=1e-15)
    # no difference at all: p = 1
    assert sign_flip_test(np.zeros((5, 1)), 10000, None)[0] == 1.0


def test_sign_flip_exact_equals_scipy_permutation_test():
    rng = np.random.default_rng(3)
    x, y = rng.random(11), rng.random(11) + 0.15
    ref = stats.permutation_test((x, y), lambda a, b, axis: np.mean(a - b, axis=axis), vectorized=True,
                                 permutation_type="samples", n_resamples=np.inf, alternative="two-sided").pvalue
    D = np.stack([x - y, y - x, np.zeros(11)], 1)  # three columns tested at once
    p = sign_flip_test(D, 10000, np.random.default_rng(0))
    assert p[0] == pytest.approx(ref, abs=1e-12) and p[1] == pytest.approx(ref, abs=1e-12) and p[2] == 1.0
    assert 0.001 < ref < 0.2  # a p-value a broken test would miss


def test_sign_flip_random_sign_vectors_near_exact():
    d = np.random.default_rng(5).normal(0.3, 1.0, 16)
    exact = sign_flip_test(d, 2**16, None)[0]  # all 65536 sign vectors
    mc = sign_flip_test(d, 10000, np.random.default_rng(1))[0]
    assert 0.02 < exact < 0.8 and mc == pytest.approx(exact, abs=0.02)  # 4 standard errors


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    p = np.array([0.01, 0.04, np.nan, 0.03, 0.005])
    out = holm(p)
    assert np.allclose(out[[0, 1, 3, 4]], [0.03, 0.06, 0.06, 0.02], atol=1e-15) and math.isnan(out[2])
    assert holm(np.array([0.01, 0.9])).tolist() == [0.02, 0.9] and holm(np.array([0.6, 0.9]))[0] == 1.0  # capped at 1


# ----------------------------------------------------------------------------- synthetic runs
USERS = [str(u) for u in range(100, 160)]  # 60 users


def fake_run(folder, cls: str, seed: int, ranks: np.ndarray, users=USERS, max_epochs: int = 50, epochs: int = 12):
    """A run folder as a fit leaves it: test_metrics.json (the metrics of these ranks) + ranks.npz."""
    r = Ranks("full", np.asarray(users), np.asarray(ranks), 500, [10, 20])
    metrics = {f"test/{m}": float(per_user(r, m).mean()) for m in r.metric_names()}
    folder.mkdir(parents=True)
    cfg = {"seed_everything": seed, "run_dir": str(folder), "monitor": "val/ndcg@10",
           "model": {"class_path": cls, "init_args": {"d": 64}},
           "data": {"class_path": "datamodules.SequentialDataModule", "init_args": {"seed": seed}},
           "trainer": {"max_epochs": max_epochs}}
    (folder / "test_metrics.json").write_text(json.dumps({"test": metrics, "epochs": epochs, "config": cfg}))
    save_ranks(folder / "ranks.npz", r)
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    rng = np.random.default_rng(0)
    base = rng.integers(0, 60, len(USERS))
    return {
        "sasrec-s0": fake_run(root / "sasrec-s0", "zoo.models.sasrec.SASRec", 0, base),
        "sasrec-s1": fake_run(root / "sasrec-s1", "zoo.models.sasrec.SASRec", 1, np.maximum(base + rng.integers(-3, 4, 60), 0)),
        # users stored in another order: compare aligns them by id
        "gru4rec": fake_run(root / "gru4rec", "zoo.models.gru4rec.GRU4Rec", 0, (base + 15)[::-1], users=USERS[::-1]),
        "horae": fake_run(root / "horae", "zoo.models.horae.HORAE", 0, np.maximum(base - 8, 0), max_epochs=12),
    }


def test_compare_table_on_synthetic_runs(runs, tmp_path):
    dirs = [runs[k] for k in ("horae", "gru4rec", "sasrec-s0", "sasrec-s1")]
    t = compare_runs(dirs, metrics=["ndcg@10", "test/hr@20"], n_boot=2000, seed=4)
    assert [m.label for m in t.models] == ["horae", "gru4rec", "sasrec"] and t.metrics == ["ndcg@10", "hr@20"]
    assert t.reference == "sasrec" and "best baseline" in t.reference_reason  # HORAE is a paper's model
    s = t.row("sasrec", "ndcg@10")
    seeds = [json.loads((runs[k] / "test_metrics.json").read_text())["test"]["test/ndcg@10"] for k in ("sasrec-s0", "sasrec-s1")]
    assert s.n_seeds == 2 and s.mean == pytest.approx(np.mean(seeds), abs=1e-12)
    assert s.seed_std == pytest.approx(np.std(seeds, ddof=1), abs=1e-12) and s.is_reference and math.isnan(s.p_value)
    # the CI of each model = scipy's percentile bootstrap of its per-user values (same generator, same draws)
    from zoo.ranks import load_ranks

    v = {k: per_user(load_ranks(runs[k] / "ranks.npz"), "ndcg@10") for k in runs}
    sas = (v["sasrec-s0"] + v["sasrec-s1"]) / 2
    for label, x in (("horae", v["horae"]), ("sasrec", sas)):
        ci = stats.bootstrap((x,), np.mean, n_resamples=2000, method="percentile",
                             rng=np.random.default_rng(4)).confidence_interval
        r = t.row(label, "ndcg@10")
        assert (r.ci_low, r.ci_high) == (pytest.approx(ci.low, abs=1e-12), pytest.approx(ci.high, abs=1e-12))
    h = t.row("horae", "ndcg@10")
    assert h.delta == pytest.approx(v["horae"].mean() - sas.mean(), abs=1e-12) and h.delta_low < h.delta < h.delta_high
    exact_like = sign_flip_test(v["horae"] - sas, 50000, np.random.default_rng(0))[0]
    assert h.p_value == pytest.approx(exact_like, abs=0.02) and h.p_value < 0.01 and h.significant
    ps = [t.row(m, k).p_value for m in ("horae", "gru4rec") for k in t.metrics]
    assert [t.row(m, k).p_holm for m in ("horae", "gru4rec") for k in t.metrics] == pytest.approx(holm(np.array(ps)).tolist())
    assert any("horae: ran to max_epochs=12" in n for n in t.notes)  # capped runs are labelled
    md = t.to_markdown()
    assert "| **sasrec** (reference) | 2 |" in md and "1 (single seed)" in md and "p_Holm" in md
    paths = write_table(t, tmp_path / "out")
    rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    assert len(rows) == 6 and {r["model"] for r in rows} == {"horae", "gru4rec", "sasrec"}
    assert paths["figure"].read_bytes()[:4] == b"\x89PNG"
    # --reference by folder or label; the reference gets no test
    t2 = compare_runs(dirs, reference=runs["gru4rec"], metrics=["ndcg@10"], n_boot=200)
    assert t2.reference == "gru4rec" and math.isnan(t2.row("gru4rec", "ndcg@10").p_value)


def test_compare_pairs_users_by_id(tmp_path):
    """Every user one place worse, stored in reverse order: paired by id, every per-user difference
    is <= 0 and the test sees it; paired by position it would be noise."""
    base = np.random.default_rng(2).integers(0, 40, len(USERS))
    a = fake_run(tmp_path / "a", "zoo.models.sasrec.SASRec", 0, base)
    b = fake_run(tmp_path / "b", "zoo.models.sasrec.SASRec", 0, (base + 1)[::-1], users=USERS[::-1])
    r = compare_runs([a, b], reference=a, metrics=["ndcg@20"], n_boot=4000).row("b", "ndcg@20")
    hits = int((base < 20).sum())
    assert r.delta < 0 and r.delta_high <= 0 and r.p_value == pytest.approx(2 / 2**hits, abs=2e-3)


def test_compare_refuses_runs_on_other_users(runs, tmp_path):
    other = fake_run(tmp_path / "pop", "zoo.models.pop.Pop", 0, np.zeros(59, int), users=USERS[1:])
    with pytest.raises(ValueError, match=r"sasrec-s0.*60 test users.*pop.*59.*not tested on the same users"):
        compare_runs([runs["sasrec-s0"], other], n_boot=10)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "test_metrics.json").write_text(json.dumps({"test": {"test/hr@10": 0.1}, "config": {}}))
    with pytest.raises(FileNotFoundError, match="ranks.npz' is missing"):
        compare_runs([tmp_path / "old"], n_boot=10)


def test_compare_reads_a_zoo_test_stamped_result(runs, tmp_path):
    import shutil

    stamped = tmp_path / "tested"
    stamped.mkdir()
    shutil.copy(runs["horae"] / "test_metrics.json", stamped / "test-20261130-010101.json")
    shutil.copy(runs["horae"] / "ranks.npz", stamped / "ranks-20261130-010101.npz")
    t = compare_runs([runs["horae"], stamped], reference=runs["horae"], metrics=["ndcg@10"], n_boot=100)
    r = t.row("tested", "ndcg@10")
    assert r.delta == 0.0 and r.p_value == 1.0 and r.mean == t.row("horae", "ndcg@10").mean
    from zoo.ranks import load_ranks

    one = compare_runs([stamped], metrics=["mrr@5"], n_boot=50)  # a cut-off the test did not log: from the ranks
    assert one.reference == "tested" and "Paired test" not in one.to_markdown()
    assert one.row("tested", "mrr@5").mean == pytest.approx(per_user(load_ranks(stamped / "ranks-20261130-010101.npz"), "mrr@5").mean())


def test_compare_command(runs, tmp_path, capsys):
    rc = main([str(runs["horae"]), str(runs["sasrec-s0"]), "--metrics", "ndcg@10", "--n-boot", "500",
               "--out", str(tmp_path / "o"), "--no-figure"])
    out = capsys.readouterr().out
    assert rc == 0 and "ndcg@10" in out and "p=" in out and (tmp_path / "o" / "compare.md").is_file()
    assert main([str(runs["horae"]), "--metrics", "ndcg_comirec@10", "--n-boot", "5", "--out", str(tmp_path / "e")]) == 1
    assert "not defined for the full protocol" in capsys.readouterr().err


def test_seeds_saved_before_and_after_a_new_argument_form_one_model(tmp_path):
    """A run saved before an init argument existed (it behaved as the default) and one saved after,
    with that argument at its default, are seeds of one model; a non-default value, or another
    value of an existing argument, is another model; run-management flags (``overwrite``) never
    split seeds."""
    from zoo.experiments.compare import Run, drop_defaults, group_runs

    def run(name: str, seed: int, data_args: dict, **top) -> Run:
        cfg = {"seed_everything": seed, "run_dir": str(tmp_path / name), **top,
               "model": {"class_path": "zoo.models.sasrec.SASRec", "init_args": {"d": 64, "dropout": 0.5}},
               "data": {"class_path": "datamodules.SequentialDataModule",
                        "init_args": {"max_len": 20, "batch_size": 256, **data_args}}}
        return Run(tmp_path / name, tmp_path / name / "test_metrics.json", {}, cfg, ranks=None)

    old = run("SASRec-s0", 0, {})  # before data.group_by_length existed
    new = run("SASRec-s1", 1, {"group_by_length": False}, overwrite=True)
    grouped = run("SASRec-s2", 2, {"group_by_length": True})
    other = run("SASRec-s3", 3, {"max_len": 50})
    assert old.group_key() == new.group_key()
    assert len({old.group_key(), grouped.group_key(), other.group_key()}) == 3
    # a run option added later (matmul_precision), at its default, is the same model; another value is not
    assert run("SASRec-s4", 4, {}, matmul_precision="highest").group_key() == old.group_key()
    assert run("SASRec-s5", 5, {}, matmul_precision="high").group_key() != old.group_key()
    # a mid-epoch last.ckpt every N steps is run management: the same model at any N
    assert run("SASRec-s6", 6, {}, last_every_n_steps=100).group_key() == old.group_key()
    assert [len(m.runs) for m in group_runs([old, new, grouped, other])] == [2, 1, 1]
    # defaults of the class's signature, its bases' through **kwargs included (lr is
    # SequentialRecommender's); a class that does not import keeps everything
    assert drop_defaults({"class_path": "zoo.models.sasrec.SASRec",
                          "init_args": {"d": 64, "dropout": 0.5, "lr": 1e-3, "topk": [5]}}) == {
        "class_path": "zoo.models.sasrec.SASRec", "init_args": {"dropout": 0.5, "topk": [5]}}
    assert drop_defaults({"class_path": "nowhere.Model", "init_args": {"d": 64}})["init_args"] == {"d": 64}


def test_models_whose_folders_share_a_name_are_labelled_by_what_sets_their_configs_apart(tmp_path):
    """Two tables' GRU4Rec-s0 folders (same parent name, e.g. runs/a/default and runs/b/default),
    one run with `loss: bpr`, the other with no `loss` (the class's default, "ce"): the labels say
    so, instead of `default/GRU4Rec#1` / `#2`; models that differ in many settings list three."""
    from zoo.experiments.compare import Run, group_runs

    def run(out: str, seed: int, **init) -> Run:
        folder = tmp_path / out / "default" / f"GRU4Rec-s{seed}"
        cfg = {"seed_everything": seed, "run_dir": str(folder),
               "model": {"class_path": "zoo.models.gru4rec.GRU4Rec", "init_args": {"d": 64, **init}},
               "data": {"class_path": "datamodules.SequentialDataModule", "init_args": {"max_len": 20}}}
        return Run(folder, folder / "test_metrics.json", {}, cfg, ranks=None)

    models = group_runs([run("bpr", 0, loss="bpr"), run("bpr", 1, loss="bpr"), run("table", 0), run("table", 1)])
    assert [(m.label, len(m.runs)) for m in models] == [("GRU4Rec (loss=bpr)", 2), ("GRU4Rec (loss=ce)", 2)]
    many = group_runs([run("a", 0, loss="bpr", d_hidden=32, n_layers=2, dropout=0.1), run("b", 0)])
    assert [m.label for m in many] == ["GRU4Rec (d_hidden=32, dropout=0.1, loss=bpr, +1 more)",
                                       "GRU4Rec (d_hidden=128, dropout=0.3, loss=ce, +1 more)"]


def test_trainer_precision_unset_is_the_default_and_labels_name_it(tmp_path):
    """A saved config's ``trainer.precision: null`` (the Trainer's 32-true) and ``32-true`` are one
    model; bf16-mixed is another, and the labels say ``precision=32-true``, not ``null``."""
    from zoo.experiments.compare import Run, group_runs

    def run(out: str, seed: int, precision) -> Run:
        folder = tmp_path / out / "default" / f"MIRACLE-s{seed}"
        cfg = {"seed_everything": seed, "run_dir": str(folder), "trainer": {"precision": precision, "max_epochs": 3},
               "model": {"class_path": "zoo.models.gru4rec.GRU4Rec", "init_args": {"d": 64}},
               "data": {"class_path": "datamodules.SequentialDataModule", "init_args": {"max_len": 20}}}
        return Run(folder, folder / "test_metrics.json", {}, cfg, ranks=None)

    assert run("a", 0, None).group_key() == run("a", 1, "32-true").group_key()
    models = group_runs([run("a", 0, None), run("a", 1, "32-true"), run("b", 0, "bf16-mixed")])
    assert [(m.label, len(m.runs)) for m in models] == [("MIRACLE (precision=32-true)", 2),
                                                        ("MIRACLE (precision=bf16-mixed)", 1)]
