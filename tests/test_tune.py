"""`zoo tune` through the real CLI: a 3-trial Optuna study on tiny data, resume after SIGKILL, bad input."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from zoo.experiments.tune import TuneError, parse_space

ROOT = Path(__file__).resolve().parents[1]
ZOO = str(Path(sys.executable).parent / "zoo")


def zoo_cmd(*args: str) -> list[str]:
    return [ZOO, *args]


def run_zoo(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(zoo_cmd(*args), cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))


def tiny_recipe(folder: Path, ml_folder: Path, space: dict | None, epochs: int = 2, name: str = "tiny") -> Path:
    """A d=16 one-layer SASRec on the tiny MovieLens folder, with ``space`` as its ``tune:`` block."""
    recipe = {
        "seed_everything": 0, "monitor": "val/ndcg@10", "patience": 0, "test_after_fit": True,
        "trainer": {"max_epochs": epochs, "limit_train_batches": 3, "accelerator": "cpu", "log_every_n_steps": 1},
        "model": {"class_path": "zoo.models.sasrec.SASRec",
                  "init_args": {"d": 16, "n_layers": 1, "n_heads": 1, "max_len": 10, "lr": 0.001}},
        "data": {"class_path": "datamodules.SequentialDataModule",
                 "init_args": {"format": "movielens", "paths": {"path": str(ml_folder)},
                               "cache_dir": str(folder / "cache"), "max_len": 10, "batch_size": 32,
                               "eval_batch_size": 16}},
    }
    if space is not None:
        recipe["tune"] = space
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


SPACE = {"model.init_args.lr": {"log": [1.0e-4, 1.0e-2]}, "model.init_args.n_layers": [1, 2],
         "model.init_args.dropout": {"float": [0.0, 0.5]}}


def load_trials(out: Path, name: str):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}").get_trials()


def test_three_trial_study_on_validation_only(ml_folder, tmp_path, capsys):
    recipe = tiny_recipe(tmp_path, ml_folder, SPACE)
    out = tmp_path / "study"
    r = run_zoo("tune", "--config", str(recipe), "--trials", "3", "--out", str(out), "--sampler-seed", "0",
                "--wandb", "offline")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-4000:]

    trials = load_trials(out, "tiny")
    assert [t.state.name for t in trials].count("COMPLETE") + [t.state.name for t in trials].count("PRUNED") == 3
    for t in trials:
        assert t.state.name in ("COMPLETE", "PRUNED"), t
        # the pruning callback reported the monitored validation metric after every epoch
        assert sorted(t.intermediate_values) == ([0, 1] if t.state.name == "COMPLETE" else sorted(t.intermediate_values))
        if t.state.name == "COMPLETE":
            assert t.value == pytest.approx(max(t.intermediate_values.values()), abs=1e-6)
        assert set(t.params) == set(SPACE)
        assert 1e-4 <= t.params["model.init_args.lr"] <= 1e-2 and t.params["model.init_args.n_layers"] in (1, 2)

    # the test split was never read: the datamodule served train and val only, and no test output exists
    trial_dirs = sorted((out / "trials").iterdir())
    assert len(trial_dirs) == 3
    for d in trial_dirs:
        rec = json.loads((d / "splits.json").read_text())
        assert set(rec["served"]) == {"train", "val"} and rec["validations"] == 2, (d, rec)
        assert not (d / "test_metrics.json").exists() and not list(d.glob("ranks*.npz")) and not list(d.glob("test-*"))
        # each trial is an offline W&B run in the group tune-<recipe>
        runs = list((d / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, d
        assert b"tune-tiny" in b"".join(p.read_bytes() for p in runs[0].glob("*.wandb"))

    # the trials table and the study plots
    rows = (out / "trials.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("trial,state,value")
    assert (out / "trials.md").read_text().count("\n") == 5
    assert (out / "history.png").stat().st_size > 1000
    summary = json.loads((out / "summary.json").read_text())
    best = max((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert summary["best_trial"] == best.number and summary["best_value"] == pytest.approx(best.value)

    # best.yaml is a ready recipe: it resolves with `zoo fit --print_config` and holds the best values
    from zoo.cli import run_cli

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", "--config", str(out / "best.yaml"), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    init = printed["model"]["init_args"]
    assert init["lr"] == pytest.approx(best.params["model.init_args.lr"])
    assert init["n_layers"] == best.params["model.init_args.n_layers"]
    assert init["dropout"] == pytest.approx(best.params["model.init_args.dropout"])
    assert printed["run_dir"] is None and printed["test_after_fit"] is True
    assert printed["tune"] == SPACE  # kept: best.yaml can seed a further search


def test_a_pruned_trial_stops_at_the_validation_that_pruned_it(ml_folder, tmp_path):
    """The Lightning pruning callback reports the monitored metric and raises from inside fit; the trial is
    PRUNED after one of its 3 epochs and, like every trial, never touched the test split."""
    import optuna

    from zoo.experiments.tune import Study

    class AlwaysPrune(optuna.pruners.BasePruner):
        def prune(self, study, trial) -> bool:
            return True

    recipe = tiny_recipe(tmp_path, ml_folder, None, epochs=3)
    ctx = Study(recipe, [], parse_space({"model.init_args.lr": [1e-3]}, "test"), tmp_path / "out", "val/ndcg@10",
                "off", "tune-tiny")
    study = optuna.create_study(direction="maximize", pruner=AlwaysPrune())
    study.optimize(ctx.objective, n_trials=1)
    (t,) = study.trials
    assert t.state.name == "PRUNED" and list(t.intermediate_values) == [0] and t.user_attrs["epochs"] == 1
    rec = json.loads((tmp_path / "out" / "trials" / "trial-0000" / "splits.json").read_text())
    assert set(rec["served"]) == {"train", "val"} and rec["validations"] == 1


def test_killed_study_resumes_with_its_finished_trials(ml_folder, tmp_path):
    """SIGKILL while trial 1 runs; the re-run keeps trial 0 as it was and reaches 3 finished trials."""
    recipe = tiny_recipe(tmp_path, ml_folder, {"model.init_args.lr": [1e-3, 3e-3, 1e-2]}, epochs=3)
    out = tmp_path / "study"
    args = ["tune", "--config", str(recipe), "--trials", "3", "--out", str(out), "--wandb", "off",
            "--pruner", "none", "--sampler-seed", "0"]
    proc = subprocess.Popen(zoo_cmd(*args), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        deadline = time.time() + 240
        while not (out / "trials" / "trial-0001" / "params.json").exists():
            assert proc.poll() is None, "the study ended before it could be killed"
            assert time.time() < deadline, "trial 1 never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = {t.number: t for t in load_trials(out, "tiny")}
    assert before[0].state.name == "COMPLETE" and before[1].state.name == "RUNNING"

    r = run_zoo(*args)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-4000:]
    after = {t.number: t for t in load_trials(out, "tiny")}
    assert after[0].value == before[0].value and after[0].datetime_complete == before[0].datetime_complete
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in after.values()) == 3
    assert "1/3 trials done" in r.stdout
    assert (out / "best.yaml").is_file()


def bad_space_run(ml_folder: Path, tmp_path: Path, space: dict, in_process: bool, capsys=None) -> tuple[int, str]:
    recipe = tiny_recipe(tmp_path, ml_folder, {"model.init_args.lr": [1e-3]})
    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump({"tune": space}))
    args = ["tune", "--config", str(recipe), "--space", str(space_file), "--trials", "2",
            "--out", str(tmp_path / "out"), "--wandb", "off"]
    if not in_process:
        r = run_zoo(*args, timeout=180)
        return r.returncode, r.stderr
    from zoo.entry import main

    capsys.readouterr()
    rc = main(args)
    return rc, capsys.readouterr().err


def test_unknown_space_key_through_the_console_script(ml_folder, tmp_path):
    rc, err = bad_space_run(ml_folder, tmp_path, {"model.init_args.no_such_arg": [1, 2]}, in_process=False)
    assert rc == 2 and "tune key 'model.init_args.no_such_arg' is not a key of the recipe" in err, err
    assert "no_such_arg" in err and "keys there:" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "trials").exists()  # nothing ran


@pytest.mark.parametrize("space, needle", [
    ({"data.init_args.no_such": [1, 2]}, "tune key 'data.init_args.no_such' is not a key of the recipe"),
    ({"model.init_args.lr": ["fast", 1e-3]}, "'model.init_args.lr': value 'fast' does not fit"),
    ({"model.init_args.n_layers": [[1, 2], 3]}, "'model.init_args.n_layers': value [1, 2] does not fit"),
    ({"model.init_args.n_layers": {"float": [1.0, 2.0]}}, "'model.init_args.n_layers': value 1.0 does not fit"),
    ({}, "the search space is empty"),
], ids=["unknown-data-key", "string-for-float", "list-for-int", "float-for-int", "empty"])
def test_bad_space_gives_one_clear_message(ml_folder, tmp_path, capsys, space, needle):
    """The `zoo` entry point in-process (the console script itself is exercised above: same code, no start-up)."""
    rc, err = bad_space_run(ml_folder, tmp_path, space, in_process=True, capsys=capsys)
    assert rc == 2 and needle in err, err
    assert not (tmp_path / "out" / "trials").exists()


def test_recipe_without_tune_block_is_an_empty_space(ml_folder, tmp_path):
    recipe = tiny_recipe(tmp_path, ml_folder, None)
    from zoo.experiments.tune import main

    with pytest.raises(SystemExit):  # argparse: --trials is required
        main(["--config", str(recipe)])
    assert main(["--config", str(recipe), "--trials", "2", "--out", str(tmp_path / "out")]) == 2


@pytest.mark.parametrize("spec, needle", [
    ({"k": {"int": [1.5, 4]}}, "int range needs two integers"),
    ({"k": {"log": [0, 1]}}, "log range needs lo > 0"),
    ({"k": {"float": [2.0, 1.0]}}, "needs lo < hi"),
    ({"k": {"uniform": [0, 1]}}, "expected a list of choices or one range"),
    ({"k": []}, "the list of choices is empty"),
    ({"k": {"float": ["a", 1]}}, "needs two numbers"),
])
def test_space_syntax_errors_name_the_key(spec, needle):
    with pytest.raises(TuneError, match="tune key 'k'") as e:
        parse_space(spec, "space.yaml")
    assert needle in str(e.value)


def test_every_recipe_tune_block_parses_and_names_recipe_keys():
    """The recipes that name a paper's grid declare it as a tune: block whose keys the recipe has."""
    from zoo.experiments.tune import get_dotted

    with_grid = 0
    for recipe in sorted((ROOT / "recipes").glob("*.yaml")):
        text = recipe.read_text()
        doc = yaml.safe_load(text)
        if "tuned in {" in text or "searches" in text:
            assert "tune" in doc, f"{recipe.name} names a grid in a comment but has no tune: block"
        if "tune" in doc:
            with_grid += 1
            for p in parse_space(doc["tune"], recipe.name):
                get_dotted(doc, p.key)  # declared in the recipe file itself
    assert with_grid >= 10


def test_reproduce_tune_trials_reports_tuned_beside_untuned(ml_folder, tmp_path):
    """`zoo reproduce --tune-trials 2`: the untuned row, then the same row tuned (SASRec names no grid: the
    fallback space lr/dropout) with the same budget, its best config tested, both in tuned.md."""
    sets = {"data.init_args.format": "movielens", "data.init_args.paths": f"{{path: {ml_folder}}}",
            "data.init_args.cache_dir": str(tmp_path / "cache"), "data.init_args.max_len": "10",
            "data.init_args.batch_size": "32", "data.init_args.text_encoder": "null",
            "data.init_args.require_text": "false", "model.init_args.d": "16"}
    out = tmp_path / "repro"
    r = run_zoo("reproduce", "--paper", "horae", "--models", "SASRec", "--datasets", "default", "--seeds", "1",
                "--out", str(out), "--max-epochs", "2", "--limit-train-batches", "3", "--wandb", "off",
                "--tune-trials", "2", *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")], timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    study = out / "horae" / "tuned" / "default-SASRec"
    assert yaml.safe_load((study / "space.yaml").read_text())["tune"].keys() == {"model.init_args.lr",
                                                                                 "model.init_args.dropout"}
    trials = load_trials(study, "default-SASRec")
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) == 2
    assert (study / "best" / "seed-0" / "test_metrics.json").is_file()
    md = (out / "horae" / "tuned.md").read_text()
    assert "R@10 untuned | R@10 tuned" in md and "with 2 trials" in md
    line = next(l for l in md.splitlines() if l.startswith("| SASRec |"))
    assert len(re.findall(r"\b[01]\.\d{4}\b", line)) >= 8, line  # 4 metrics x (untuned, tuned)
