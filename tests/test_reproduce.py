"""`zoo reproduce` / `zoo ablate` end to end on the tiny GroupLens fixture, plus the paper numbers and the t-test."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from zoo.experiments.reproduce import (
    NUMBERS, Options, betainc, load_numbers, paired_ttest, plan_cell, resolve_path,
)

ROOT = Path(__file__).resolve().parents[1]
ZOO = str(Path(sys.executable).parent / "zoo")
PAPERS_TXT = Path("/work/shared/papers")


def tiny_sets(ml_folder: Path, cache: Path) -> list[str]:
    sets = {"data.init_args.format": "movielens", "data.init_args.paths": f"{{path: {ml_folder}}}",
            "data.init_args.cache_dir": str(cache), "data.init_args.max_len": "10", "data.init_args.batch_size": "32",
            "data.init_args.text_encoder": "null", "data.init_args.require_text": "false",
            "model.init_args.d": "16", "trainer.log_every_n_steps": "1"}
    return [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]


def zoo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([ZOO, *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))


@pytest.fixture(scope="module")
def reduced(ml_folder, tmp_path_factory):
    """HORAE's table, two models (SASRec, Pop), the embedded-default row on tiny data, one seed, few steps."""
    out = tmp_path_factory.mktemp("repro")
    args = ["reproduce", "--paper", "horae", "--models", "SASRec", "Pop", "--datasets", "default", "--seeds", "1",
            "--out", str(out), "--max-epochs", "2", "--limit-train-batches", "3", "--wandb", "offline",
            *tiny_sets(ml_folder, out / "cache")]
    first = zoo(*args)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return out, args, first


def test_table_has_every_expected_cell(reduced):
    out, _, first = reduced
    assert first.stdout.count("[reproduce] run ") == 2
    md = (out / "horae" / "table.md").read_text()
    labels = ["R@10", "R@50", "N@10", "N@50"]
    assert "| model | " + " | ".join(labels) + " |" in md
    for model in ("SASRec", "Pop"):
        line = next(l for l in md.splitlines() if l.startswith(f"| {model} |"))
        cells = line.strip("|").split("|")[1:]
        assert len(cells) == 4 and all(re.match(r"\s*[01]\.\d{4} · paper —", c) for c in cells), line
    with open(out / "horae" / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["model"] for r in rows} == {"SASRec", "Pop"} and all(r["status"] == "done" for r in rows)
    for r in rows:
        assert r["seed"] == "0" and len(r["config_hash"]) == 12 and float(r["wall_time_s"]) > 0
        for m in ("recall@10", "recall@50", "ndcg@10", "ndcg@50"):
            assert 0.0 <= float(r[f"test/{m}"]) <= 1.0
        assert Path(r["run_dir"], "recipe.yaml").is_file()
    sas = next(r for r in rows if r["model"] == "SASRec")
    assert sas["checkpoint"].endswith("best.ckpt") and Path(sas["checkpoint"]).is_file()
    # the baseline ran on the cell's data with the paper model's metrics and max_len alignment
    recipe = yaml.safe_load(Path(sas["run_dir"], "recipe.yaml").read_text())
    assert recipe["model"]["init_args"]["topk"] == [10, 50] and recipe["monitor"] == "val/recall@10"
    assert recipe["model"]["init_args"]["max_len"] == recipe["data"]["init_args"]["max_len"] == 10
    assert recipe["model"]["init_args"]["d"] == 16
    results = json.loads((out / "horae" / "results.json").read_text())
    assert len(results["runs"]) == 2
    # W&B offline: each run plus the group's summary run
    assert list(Path(sas["run_dir"]).glob("wandb/offline-run-*"))
    assert list((out / "wandb").glob("offline-run-*"))


def test_second_invocation_runs_nothing(reduced):
    out, args, _ = reduced
    metrics = out / "horae" / "default" / "SASRec-s0" / "test_metrics.json"
    before = metrics.stat().st_mtime_ns
    again = zoo(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[reproduce] run " not in again.stdout and "resume" not in again.stdout
    assert metrics.stat().st_mtime_ns == before


def test_missing_dataset_is_reported_with_its_expected_path(tmp_path):
    empty = tmp_path / "raw"
    empty.mkdir()
    r = zoo("reproduce", "--paper", "horae", "--models", "SASRec", "--datasets", "Office", "--seeds", "1",
            "--data-root", str(empty), "--out", str(tmp_path / "out"), "--wandb", "off")
    assert r.returncode == 0, r.stderr[-3000:]
    expected = str(empty / "amazon2018" / "Office_Products.csv")
    assert expected in r.stdout
    md = (tmp_path / "out" / "horae" / "table.md").read_text()
    assert "skipped SASRec" in md and expected in md
    # the paper's numbers stay beside the skipped cell
    assert "0.1081" in md
    rows = list(csv.DictReader(open(tmp_path / "out" / "horae" / "results.csv", newline="")))
    assert [r["status"] for r in rows] == ["skipped"] and expected in rows[0]["reason"]


def test_plot_writes_pngs(reduced):
    out, _, _ = reduced
    from zoo.experiments.plot import main as plot_main

    assert plot_main(["--results", str(out), "--paper", "horae"]) == 0
    for name in ("metrics-default.png", "curves-default.png"):
        data = (out / "horae" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name


def test_ablate_one_row_in_one_group(ml_folder, tmp_path):
    """A reduced TiMiRec Table 4 row ("joint train": no pre-training) through `zoo ablate`."""
    r = zoo("ablate", "--paper", "timirec", "--dataset", "default", "--table", "Table 4", "--rows", "joint train",
            "--seeds", "1", "--out", str(tmp_path), "--max-epochs", "1", "--limit-train-batches", "2",
            "--wandb", "off", "--set", "data.init_args.eval_negatives=20", *tiny_sets(ml_folder, tmp_path / "cache"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    md = (tmp_path / "timirec" / "ablation-Table_4-default.md").read_text()
    line = next(l for l in md.splitlines() if l.startswith("| joint train |"))
    assert len(re.findall(r"[01]\.\d{4} · paper —", line)) == 2
    recipe = yaml.safe_load((tmp_path / "timirec" / "ablation" / "Table_4" / "default" / "joint_train-s0"
                             / "recipe.yaml").read_text())
    assert recipe["model"]["init_args"]["pretrained_ckpt"] is None
    assert not (tmp_path / "pretrain").exists()


def test_every_cell_and_ablation_row_plans(tmp_path):
    """Every runnable column and ablation row maps to an existing recipe and init-arg switch, and
    pre-training cells get their pre-training run (same switches, checkpoint passed on)."""
    numbers = load_numbers()
    opts = Options(out=tmp_path, quiet=True)
    for paper in ("horae", "miracle", "timirec", "hpcl4sr", "hm4sr"):
        main = numbers[paper]["main"]
        specs = {**main["models"], **(main.get("reference") or {})}
        for ds, dspec in main["datasets"].items():
            if dspec.get("data_from") is None:
                continue
            for model, spec in specs.items():
                if spec.get("implemented") is False:
                    continue
                run = plan_cell(specs, model, dspec, {}, tmp_path / "x", 0, "g", opts)
                assert run.cfg["model"]["class_path"].startswith("zoo.models.")
        for table in numbers[paper].get("ablations") or []:
            dspec = table["datasets"]["default"]
            for row, rspec in table["rows"].items():
                run = plan_cell(specs, rspec.get("model", table["base"]), dspec, dict(rspec.get("args") or {}),
                                tmp_path / "y", 0, "g", opts)
                for k, v in (rspec.get("args") or {}).items():
                    assert run.cfg["model"]["init_args"][k] == v, (paper, row, k)
    horae = numbers["horae"]["main"]
    specs = horae["models"]
    run = plan_cell(specs, "HORAE", horae["datasets"]["default"], {"interest_intra": False}, tmp_path / "h", 3, "g", opts)
    assert run.pretrain is not None and run.pretrain.cfg["model"]["init_args"]["stage"] == "pretrain"
    assert run.pretrain.cfg["model"]["init_args"]["interest_intra"] is False  # the switch reaches pre-training
    # HORAE fine-tunes from the LAST pre-training epoch (official code), TiMiRec from the best stage-1 one
    assert run.cfg["model"]["init_args"]["pretrained_ckpt"] == str(run.pretrain.run_dir / "last.ckpt")
    tim = numbers["timirec"]["main"]
    run = plan_cell(tim["models"], "TiMiRec+", tim["datasets"]["Beauty"], {}, tmp_path / "t", 0, "g", opts)
    assert run.cfg["model"]["init_args"]["pretrained_ckpt"] == str(run.pretrain.run_dir / "best.ckpt")
    assert run.cfg["model"]["init_args"]["transformer"] is True
    assert run.pretrain.cfg["model"]["init_args"]["transformer"] is True
    assert run.pretrain.cfg["data"] == run.cfg["data"]  # TiMiRec's stage 1 runs on the cell's data


def test_data_root_rewrites_only_data_paths(tmp_path):
    assert resolve_path("data/amazon2018/X.csv", tmp_path) == tmp_path / "amazon2018" / "X.csv"
    assert resolve_path("~/data/ml-1m", tmp_path) == tmp_path / "ml-1m"
    assert resolve_path("~/.cache/zoo/raw/ml-100k", tmp_path) == Path("~/.cache/zoo/raw/ml-100k").expanduser()


def test_paired_ttest_matches_known_values():
    # d = 1, 2, 3, 4: mean 2.5, sd 1.2910, t = 3.8730, df 3, two-sided p = 0.030466 (t tables)
    t, p, n = paired_ttest([2.0, 4.0, 6.0, 8.0], [1.0, 2.0, 3.0, 4.0])
    assert n == 4 and t == pytest.approx(3.872983, rel=1e-6) and p == pytest.approx(0.030466, abs=2e-6)
    # df = 1: p = 1 - 2 atan(|t|)/pi (Cauchy)
    t, p, _ = paired_ttest([3.0, 1.0], [1.0, 0.0])
    assert p == pytest.approx(1 - 2 * math.atan(abs(t)) / math.pi, rel=1e-9)
    assert betainc(2.0, 3.0, 0.4) == pytest.approx(0.5248, abs=1e-4)  # I_0.4(2,3) = 1 - (0.6^4 + 4*0.4*0.6^3)
    assert math.isnan(paired_ttest([1.0], [0.0])[1])


def _paper_lines(name: str) -> list[list[str]]:
    text = re.sub(r"</?(u|b)>", "", (PAPERS_TXT / f"{name}.txt").read_text()).replace("*", "")
    return [[c.strip() for c in line.split("\t")] for line in text.splitlines()]


@pytest.mark.skipif(not PAPERS_TXT.is_dir(), reason="paper texts not available")
def test_paper_numbers_match_the_papers_tables():
    numbers = yaml.safe_load(NUMBERS.read_text())
    for paper in ("horae", "miracle", "timirec", "hpcl4sr", "hm4sr"):
        lines = _paper_lines(paper)
        tables = [numbers[paper]["main"], *(numbers[paper].get("ablations") or [])]
        for table in tables:
            for ds, rows in (table.get("results") or {}).items():
                names = list(rows)
                for m in table["metrics"]:
                    if paper == "hm4sr" or table is not numbers[paper]["main"]:
                        continue
                    seq = [f"{rows[n][m]:.4f}" for n in names]  # one printed row: a metric across models
                    assert any(seq == line[i:i + len(seq)] for line in lines for i in range(len(line))), (paper, ds, m)
                for n in names:  # every value appears in the paper's table rows
                    for m, v in rows[n].items():
                        assert any(f"{v:.4f}" in line for line in lines), (paper, ds, n, m, v)


def test_a_run_already_made_for_another_table_is_shared_not_rerun(tmp_path):
    """The same baseline on the embedded default appears in HORAE's and MIRACLE's tables: the
    second table reuses the first one's finished run (same config hash and seed), and --force does not."""
    from zoo.experiments.reproduce import Run, execute, find_twin

    opts = Options(out=tmp_path, quiet=True)
    cfg = {"model": {"class_path": "zoo.models.sasrec.SASRec"}, "trainer": {"max_epochs": 1}}
    first = Run(cfg, tmp_path / "horae" / "default" / "SASRec-s0", 0, "g")
    first.run_dir.mkdir(parents=True)
    (first.run_dir / "test_metrics.json").write_text(json.dumps({"test": {"test/recall@10": 0.25}, "epochs": 3}))
    (first.run_dir / "reproduce.json").write_text(json.dumps({"config_hash": first.hash, "seed": 0, "status": "done"}))

    second = Run(cfg, tmp_path / "miracle" / "default" / "SASRec-s0", 0, "g")
    assert find_twin(second, tmp_path) == first.run_dir
    assert find_twin(Run(cfg, second.run_dir, 1, "g"), tmp_path) is None  # another seed
    other = Run({**cfg, "trainer": {"max_epochs": 2}}, second.run_dir, 0, "g")
    assert find_twin(other, tmp_path) is None  # another config
    out = execute(second, opts)
    assert out["status"] == "reused" and out["twin_of"] == str(first.run_dir)
    assert json.loads((second.run_dir / "test_metrics.json").read_text())["test"]["test/recall@10"] == 0.25
    again = execute(first, opts)  # a finished run is reused, and says so (not the stored "done")
    assert again["status"] == "reused" and again["stale"] is False
    third = Run(cfg, tmp_path / "hm4sr" / "default" / "SASRec-s0", 0, "g")
    assert find_twin(third, tmp_path) == first.run_dir  # a copy is never itself a source
    ablation_row = Run(cfg, tmp_path / "timirec" / "ablation" / "Table_4" / "default" / "SASRec-s0", 0, "g")
    assert find_twin(ablation_row, tmp_path) == first.run_dir  # an ablation row finds a main-table cell
    other_cfg = {**cfg, "trainer": {"max_epochs": 7}}
    in_ablation = Run(other_cfg, ablation_row.run_dir, 0, "g")
    in_ablation.run_dir.mkdir(parents=True)
    (in_ablation.run_dir / "test_metrics.json").write_text(json.dumps({"test": {}}))
    (in_ablation.run_dir / "reproduce.json").write_text(
        json.dumps({"config_hash": in_ablation.hash, "seed": 0, "status": "done"}))
    main_cell = Run(other_cfg, tmp_path / "timirec" / "default" / "SASRec-s0", 0, "g")
    assert find_twin(main_cell, tmp_path) == in_ablation.run_dir  # ... and the other way round
