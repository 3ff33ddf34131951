"""The `zoo` entry point end to end: fit + test, --print_config for every recipe, DDP equality."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ZOO = str(Path(sys.executable).parent / "zoo")
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


def zoo(*args: str, cwd: Path = ROOT, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    e = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run([ZOO, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=e)


def tiny_data_args(folder: Path, cache: Path) -> list[str]:
    return [
        "--data.init_args.format", "movielens",
        "--data.init_args.paths", json.dumps({"path": str(folder)}),
        "--data.init_args.cache_dir", str(cache),
        "--data.init_args.max_len", "10",
        "--data.init_args.batch_size", "32",
        "--data.init_args.eval_batch_size", "16",
    ]


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_print_config_every_recipe(recipe, capsys):
    """Every recipe parses (model and data class paths, every key typed) and prints its config."""
    from zoo.cli import run_cli

    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", "--config", str(recipe), "--print_config"])
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    assert "class_path: zoo.models." in out and "class_path: datamodules." in out


def tiny_sasrec_fit(ml_folder: Path, out: Path, name: str, *extra: str) -> subprocess.CompletedProcess:
    """Two short epochs of a d=16 SASRec on the tiny MovieLens folder into ``out/name``."""
    r = zoo(
        "fit", "--config", "recipes/sasrec.yaml", *tiny_data_args(ml_folder, out / "cache"),
        "--model.init_args.d", "16", "--model.init_args.max_len", "10",
        "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "4",
        "--run_dir", str(out / name), *extra,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r


@pytest.fixture(scope="module")
def sasrec_run(ml_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return out, tiny_sasrec_fit(ml_folder, out, "sasrec")


def test_fit_then_test_writes_metrics(sasrec_run):
    out, r = sasrec_run
    metrics = json.loads((out / "sasrec" / "test_metrics.json").read_text())
    test = metrics["test"]
    for k in ("test/recall@10", "test/ndcg@10", "test/mrr@10", "test/hr@50"):
        assert 0.0 <= test[k] <= 1.0
    assert test["test/ndcg@10"] <= test["test/recall@10"]
    assert (out / "sasrec" / "best.ckpt").is_file() and (out / "sasrec" / "last.ckpt").is_file()
    assert metrics["best_checkpoint"].endswith("best.ckpt")
    assert "[zoo] test metrics" in r.stdout
    for noise in ("litlogger", "LeafSpec", "exists and is not empty"):  # quiet_lightning_noise
        assert noise not in r.stdout + r.stderr, noise


def test_last_ckpt_is_the_latest_epoch_even_without_improvement(ml_folder, tmp_path):
    """With lr = 0 validation never improves after epoch 0: best.ckpt stays at epoch 0 while
    last.ckpt must follow every epoch (Lightning 2.6 alone leaves it at the best epoch)."""
    tiny_sasrec_fit(ml_folder, tmp_path, "flat", "--trainer.max_epochs", "3", "--patience", "0",
                    "--model.init_args.lr", "0.0")
    epoch = {name: torch.load(tmp_path / "flat" / f"{name}.ckpt", map_location="cpu", weights_only=True)["epoch"]
             for name in ("best", "last")}
    assert epoch == {"best": 0, "last": 2}


def test_matmul_precision_switch(ml_folder, tmp_path):
    """``--matmul_precision high`` (TF32 on NVIDIA GPUs) is applied and said; a value outside
    highest/high/medium is refused by name before anything runs."""
    r = tiny_sasrec_fit(ml_folder, tmp_path, "tf32", "--matmul_precision", "high")
    assert "[zoo] float32 matmul precision: high" in r.stdout
    assert json.loads((tmp_path / "tf32" / "test_metrics.json").read_text())["test"]
    bad = zoo("fit", "--config", "recipes/sasrec.yaml", "--matmul_precision", "tf32")
    assert bad.returncode != 0 and "matmul_precision" in bad.stderr and "highest" in bad.stderr, bad.stderr[-2000:]
    bad = zoo("fit", "--config", "recipes/sasrec.yaml", "--cpu_allocator", "jemalloc")
    assert bad.returncode != 0 and "cpu_allocator" in bad.stderr and "retain" in bad.stderr, bad.stderr[-2000:]


def test_compile_switch_traces_the_model_and_keeps_checkpoints_interchangeable(sasrec_run, ml_folder):
    """``--compile`` runs the sub-networks through torch.compile (TorchDynamo; the ``eager`` backend
    keeps the test free of a C++ toolchain): same metrics as the eager run, same checkpoint keys."""
    out, _ = sasrec_run
    r = tiny_sasrec_fit(ml_folder, out, "compiled", "--compile", "default", "--compile_backend", "eager")
    assert "[zoo] torch.compile (default, eager, scope modules): " in r.stdout and "encoder" in r.stdout
    eager = json.loads((out / "sasrec" / "test_metrics.json").read_text())["test"]
    compiled = json.loads((out / "compiled" / "test_metrics.json").read_text())["test"]
    assert compiled.keys() == eager.keys()
    assert all(abs(compiled[k] - eager[k]) < 1e-6 for k in eager), (compiled, eager)
    import torch

    keys = torch.load(out / "compiled" / "best.ckpt", map_location="cpu", weights_only=True)["state_dict"].keys()
    assert not any("_orig_mod" in k for k in keys)
    assert keys == torch.load(out / "sasrec" / "best.ckpt", map_location="cpu", weights_only=True)["state_dict"].keys()


def test_a_carried_best_ckpt_without_optimiser_state_tests_the_same(sasrec_run, tmp_path):
    """``zoo reproduce --archive-unfinished`` carries ``best.ckpt`` without its optimiser state (the
    resumed fit only tests it): it is a third of the size and ``zoo test`` gives the same metrics."""
    import shutil

    import torch

    from zoo.experiments.reproduce import weights_only_checkpoint

    out, _ = sasrec_run
    run = tmp_path / "carried"
    shutil.copytree(out / "sasrec", run, ignore=shutil.ignore_patterns("wandb", "logs"))
    full = (run / "best.ckpt").read_bytes()
    slim = weights_only_checkpoint(full)
    assert len(slim) < 0.6 * len(full)
    ckpt = torch.load(run / "best.ckpt", map_location="cpu", weights_only=True)
    (run / "best.ckpt").write_bytes(slim)
    kept = torch.load(run / "best.ckpt", map_location="cpu", weights_only=True)
    assert "optimizer_states" not in kept and kept["state_dict"].keys() == ckpt["state_dict"].keys()
    assert all(torch.equal(kept["state_dict"][k], v) for k, v in ckpt["state_dict"].items())
    assert weights_only_checkpoint(b"not a checkpoint") == b"not a checkpoint"
    r = zoo("test", "--run", str(run))
    assert r.returncode == 0, r.stderr[-3000:]
    (stamped,) = run.glob("test-*.json")  # in the copy, not in the folder its config.yaml was fitted in
    assert not list((out / "sasrec").glob("test-*.json"))
    again = json.loads(stamped.read_text())["test"]
    first = json.loads((out / "sasrec" / "test_metrics.json").read_text())["test"]
    assert again.keys() == first.keys() and all(again[k] == pytest.approx(first[k], abs=1e-7) for k in first)


def test_second_run_loads_the_cache(sasrec_run, ml_folder):
    out, _ = sasrec_run
    r = zoo("test", "--config", "recipes/sasrec.yaml", *tiny_data_args(ml_folder, out / "cache"),
            "--model.init_args.d", "16", "--model.init_args.max_len", "10",
            "--ckpt_path", str(out / "sasrec" / "best.ckpt"), "--run_dir", str(out / "sasrec_test"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "loaded processed cache" in r.stdout
    (stamped,) = (out / "sasrec_test").glob("test-*.json")  # zoo test never writes test_metrics.json
    again = json.loads(stamped.read_text())["test"]
    first = json.loads((out / "sasrec" / "test_metrics.json").read_text())["test"]
    assert again["test/ndcg@10"] == pytest.approx(first["test/ndcg@10"], abs=1e-6)


def test_predict_writes_top_k_in_original_ids(sasrec_run, ml_folder):
    out, _ = sasrec_run
    r = zoo("predict", "--config", "recipes/sasrec.yaml", *tiny_data_args(ml_folder, out / "cache"),
            "--model.init_args.d", "16", "--model.init_args.max_len", "10",
            "--ckpt_path", str(out / "sasrec" / "best.ckpt"), "--run_dir", str(out / "pred"))
    assert r.returncode == 0, r.stderr[-3000:]
    (pred,) = (out / "pred").glob("predictions-*.csv")  # a stamped name: never replaces a file
    lines = pred.read_text().splitlines()
    assert lines[0] == "user_id,user_index,items,scores"
    rows = [l.split(",") for l in lines[1:]]
    users = {int(r[1]) for r in rows}
    assert len(users) == len(rows) >= 30  # one row per evaluated user
    user_ids = json.loads(next((out / "cache").glob("*/user_ids.json")).read_text())
    assert all(r[0] == user_ids[int(r[1])] for r in rows)  # the publisher's id of that user index
    assert {r[0] for r in rows} <= {str(u) for u in range(1, 41)} and any(r[0] != str(int(r[1]) + 1) for r in rows)
    movies = {str(i) for i in range(1, 61)}  # the fixture's original movieIds
    first = rows[0][2].split()
    n_items = json.loads(next((out / "cache").glob("*/stats.json")).read_text())["num_items"]
    assert len(first) == min(50, n_items) == len(set(first)) and set(first) <= movies
    scores = [float(x) for x in rows[0][3].split()]
    assert scores == sorted(scores, reverse=True)


def test_ddp_two_processes_equal_one(sasrec_run, ml_folder):
    """2 CPU processes (gloo) give exactly the single-process validation metrics."""
    out, _ = sasrec_run
    common = ["validate", "--config", "recipes/sasrec.yaml", *tiny_data_args(ml_folder, out / "cache"),
              "--model.init_args.d", "16", "--model.init_args.max_len", "10",
              "--ckpt_path", str(out / "sasrec" / "best.ckpt"), "--trainer.accelerator", "cpu"]
    one = zoo(*common, "--run_dir", str(out / "v1"))
    assert one.returncode == 0, one.stderr[-3000:]
    two = zoo(*common, "--trainer.devices", "2", "--trainer.strategy", "ddp", "--run_dir", str(out / "v2"))
    assert two.returncode == 0, two.stderr[-3000:]
    m1, m2 = (json.loads(next((out / v).glob("validate-*.json")).read_text())["validate"] for v in ("v1", "v2"))
    assert m1.keys() == m2.keys() and len(m1) >= 8
    for k in m1:
        assert m2[k] == pytest.approx(m1[k], abs=1e-6), k


def test_bad_recipe_key_gives_one_clear_message(ml_folder, tmp_path):
    r = zoo("fit", "--config", "recipes/sasrec.yaml", "--model.init_args.no_such_arg", "3", timeout=120)
    assert r.returncode != 0
    assert "no_such_arg" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_data_path_gives_one_clear_message(tmp_path):
    r = zoo("fit", "--config", "recipes/sasrec.yaml", "--data.init_args.format", "movielens",
            "--data.init_args.paths", json.dumps({"path": str(tmp_path / "nowhere")}),
            "--data.init_args.cache_dir", str(tmp_path / "cache"), timeout=120)
    assert r.returncode != 0
    assert "nowhere" in r.stderr
    assert "Traceback" not in r.stderr


def test_later_run_options_have_the_cli_defaults_compare_assumes():
    """zoo compare treats a run saved before an option existed as that option's default
    (LATER_RUN_OPTIONS); the parser's defaults must be those values."""
    import yaml

    from zoo.experiments.compare import LATER_RUN_OPTIONS

    r = zoo("fit", "--config", "recipes/sasrec.yaml", "--print_config")
    assert r.returncode == 0, r.stderr[-2000:]
    cfg = yaml.safe_load(r.stdout)
    assert {k: cfg.get(k) for k in LATER_RUN_OPTIONS} == LATER_RUN_OPTIONS
