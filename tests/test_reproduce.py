"""`zoo reproduce` / `zoo ablate` end to end on the tiny GroupLens fixture, plus the paper numbers and the
tables' statistics (those of `zoo compare`)."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from zoo.experiments.reproduce import (
    NUMBERS, Cell, Options, Run, execute_plan, find_twin, load_numbers, make_plan, plan_cell, resolve_path,
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


def zoo(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([ZOO, *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))


def result_line(md: str, row: str) -> str:
    """The results-table line of ``row`` (the reference row is marked "(reference)")."""
    return next(line for line in md.splitlines() if re.match(rf"\| {re.escape(row)}( \(reference\))? \|", line))


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
    assert first.stdout.count("] start ") == 2 and first.stdout.count("] done ") == 2
    md = (out / "horae" / "table.md").read_text()
    labels = ["R@10", "R@50", "N@10", "N@50"]
    assert "| model | " + " | ".join(labels) + " |" in md
    for model in ("SASRec", "Pop"):
        line = result_line(md, model)
        cells = line.strip("|").split("|")[1:]
        assert len(cells) == 4 and all(re.match(r"\s*[01]\.\d{4} \[[01]\.\d{4}, [01]\.\d{4}\] · paper —", c) for c in cells), line
    assert re.search(r"Paired test against \*\*(SASRec|Pop)\*\* \(the best baseline on recall@10\)", md), md
    assert re.search(r"^\| (SASRec|Pop) \| [+-]0\.\d{4} \[.*p_Holm=", md, re.M), md
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
    assert "plan: 0 zoo fit run(s)" in again.stdout and "] start " not in again.stdout
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


PLANNED = re.compile(r"^\s*\[(\d+)/(\d+)\] (run|resume)\s+.*  est ≤ .* -> (\S+)$", re.M)
STARTED = re.compile(r"^\[(?:reproduce|ablate)\] \[(\d+)/(\d+)\] start .* -> (\S+)$", re.M)


def planned_dirs(stdout: str) -> list[str]:
    return [m.group(4) for m in PLANNED.finditer(stdout)]


def started_dirs(stdout: str) -> list[str]:
    return [m.group(3) for m in STARTED.finditer(stdout)]


def test_the_plan_is_exactly_what_runs(ml_folder, tmp_path):
    """The dry run's plan equals the fits a real run starts, in order, for `zoo reproduce` (TiMiRec:
    its pre-training first, then the fine-tuning the old dry run left out) and `zoo ablate` (TiMiRec's
    Table 4 on the same --out: "joint train" runs without pre-training, the TiMiRec row is the main
    table's cell, shared and not run again).  Real runs print one line per start, per epoch and per end."""
    tiny = ["--seeds", "1", "--out", str(tmp_path), "--max-epochs", "2", "--limit-train-batches", "2",
            "--wandb", "off", "--set", "data.init_args.eval_negatives=20", *tiny_sets(ml_folder, tmp_path / "cache")]
    rep = ["reproduce", "--paper", "timirec", "--models", "TiMiRec", "--datasets", "default", *tiny]
    dry = zoo(*rep, "--dry-run")
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    plan = planned_dirs(dry.stdout)
    assert len(plan) == 2 and "/pretrain/timirec_pretrain-" in plan[0] and plan[1].endswith("/timirec/default/TiMiRec-s0")
    assert not any(tmp_path.glob("timirec*")) and not (tmp_path / "pretrain").exists()  # a dry run writes nothing
    real = zoo(*rep)
    assert real.returncode == 0, real.stdout[-3000:] + real.stderr[-3000:]
    assert planned_dirs(real.stdout) == plan and started_dirs(real.stdout) == plan
    for i in (1, 2):  # at most one line per epoch, and the test metric at the end
        assert len(re.findall(rf"\[{i}/2\] epoch 1/2 ", real.stdout)) == 1, real.stdout
        assert re.search(rf"\[{i}/2\] done .* in .*: test/ndcg@5 [01]\.\d{{4}}", real.stdout), real.stdout

    abl = ["ablate", "--paper", "timirec", "--dataset", "default", "--table", "Table 4", "--rows", "joint train",
           "TiMiRec", *tiny]
    dry = zoo(*abl, "--dry-run")
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    plan = planned_dirs(dry.stdout)
    assert plan == [str(tmp_path / "timirec" / "ablation" / "Table_4" / "default" / "joint_train-s0")], dry.stdout
    assert re.search(r"share  timirec Table 4/default/TiMiRec seed 0  = .*/timirec/default/TiMiRec-s0", dry.stdout)
    real = zoo(*abl)
    assert real.returncode == 0, real.stdout[-3000:] + real.stderr[-3000:]
    assert started_dirs(real.stdout) == plan
    md = (tmp_path / "timirec" / "ablation-Table_4-default.md").read_text()
    for row in ("joint train", "TiMiRec"):
        line = result_line(md, row)
        assert len(re.findall(r"[01]\.\d{4} \[[01]\.\d{4}, [01]\.\d{4}\] · paper —", line)) == 2, line  # the shared row has its ranks too
    recipe = yaml.safe_load(Path(plan[0], "recipe.yaml").read_text())
    assert recipe["model"]["init_args"]["pretrained_ckpt"] is None
    assert "Paired test against **TiMiRec**" in md and result_line(md, "TiMiRec").startswith("| TiMiRec (reference) |")


def test_default_out_is_outside_version_control_and_a_failed_run_leaves_no_empty_folder(tmp_path):
    """Without --out, results go to ./runs/reproduce (./runs/ablate for ablate), never to
    benchmarks/results; a fit that fails leaves its log and reason, and no empty folder."""
    work = tmp_path / "work"
    work.mkdir()

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([ZOO, *args], cwd=work, capture_output=True, text=True, timeout=600,
                              env=dict(os.environ, PYTHONUNBUFFERED="1"))

    dry = run("ablate", "--paper", "hpcl4sr", "--rows", "base", "--dry-run")
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert planned_dirs(dry.stdout) == [str(work / "runs" / "ablate" / "hpcl4sr" / "ablation" / "Table_3" / "default"
                                            / "base-s0")]
    r = run("reproduce", "--paper", "horae", "--models", "Pop", "--datasets", "default", "--wandb", "off",
            "--set", "trainer.no_such_key=1")
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    out = work / "runs" / "reproduce"
    assert started_dirs(r.stdout) == [str(out / "horae" / "default" / "Pop-s0")]
    failed = re.search(r"\[1/1\] FAILED horae Table 7/default/Pop seed 0 after .* \(exit \d+\): (.*) - see", r.stdout)
    assert failed and "no_such_key" in failed.group(1), r.stdout
    rows = list(csv.DictReader(open(out / "horae" / "results.csv", newline="")))
    assert [x["status"] for x in rows] == ["failed"] and "no_such_key" in rows[0]["reason"]
    assert (out / "horae" / "default" / "Pop-s0" / "zoo.log").is_file()
    empty = [d for d in work.rglob("*") if d.is_dir() and not any(d.iterdir())]
    assert not empty, empty
    assert sorted(p.name for p in work.iterdir()) == ["runs"]


def test_every_paper_plans_every_row_once(tmp_path):
    """For every paper's main table and ablation tables, with no raw data at all: every implemented
    row of paper_numbers.yaml on every dataset is in the plan (run or skipped with a reason), no run
    folder appears twice, and each pre-training is planned before the first cell that loads it."""
    from zoo.experiments.ablate import ablation_cells
    from zoo.experiments.reproduce import main_cells, main_rows

    numbers = load_numbers()
    opts = Options(out=tmp_path, quiet=True, data_root=tmp_path / "no-data", seeds=[0, 1])
    for paper in ("horae", "miracle", "timirec", "hpcl4sr", "hm4sr"):
        groups = [main_cells(paper, numbers, opts)]
        table = numbers[paper]["main"]
        rows, _ = main_rows(paper, numbers, None)
        assert {(c.dataset, c.row, c.seed) for c in groups[0]} == {
            (d, r, s) for d in table["datasets"] for r in rows for s in (0, 1)}
        for abl in numbers[paper].get("ablations") or []:
            for ds in abl["datasets"]:
                (_, names, cells), = ablation_cells(paper, ds, numbers, opts, [abl["table"]])
                assert names == list(abl["rows"]) and [c.row for c in cells] == [r for r in names for _ in (0, 1)]
                groups.append(cells)
        for cells in groups:
            steps = make_plan(cells, opts)
            dirs = [s.run.run_dir for s in steps if s.run is not None and s.action != "skip"]
            assert len(dirs) == len(set(dirs)), paper
            for c in cells:  # every cell is a step of its own (run, share or skip)
                assert any(s.label == c.label for s in steps), (paper, c.label)
            for i, s in enumerate(steps):
                if s.fits and s.run.pretrain is not None:
                    assert any(t.run is s.run.pretrain or t.run.run_dir == s.run.pretrain.run_dir
                               for t in steps[:i] if t.run is not None), (paper, s.label)
            assert [s.index for s in steps if s.fits] == list(range(1, sum(s.fits for s in steps) + 1))


def test_dry_run_of_timirec_lists_every_fit_the_real_run_makes(tmp_path):
    """The reported bug: `zoo reproduce --paper timirec --dry-run` listed 8 runs without TiMiRec and
    TiMiRec+; `zoo ablate --paper timirec --dry-run` showed 1 of 7 rows and one pre-training twice.
    Run from an empty folder: finished runs under the checkout's runs/ would be shared, not planned."""
    here = tmp_path / "cwd"
    here.mkdir()
    recipes = ("--recipes", str(ROOT / "recipes"))
    r = zoo("reproduce", "--paper", "timirec", "--dry-run", "--out", str(tmp_path / "out"), "--datasets", "default",
            *recipes, cwd=here)
    assert r.returncode == 0, r.stderr[-3000:]
    plan = planned_dirs(r.stdout)
    cells = [d.rsplit("/", 1)[1] for d in plan if "/timirec/default/" in d]
    assert cells == [f"{slug}-s0" for slug in ("GRU4Rec", "MIND", "ComiRec-SA", "TiMiRec", "SASRec", "TiSASRec",
                                               "ComiRec-SA+", "TiMiRec+", "Pop")]
    assert len([d for d in plan if "/pretrain/" in d]) == 2 and len(plan) == 11 == len(set(plan))
    r = zoo("ablate", "--paper", "timirec", "--dry-run", "--out", str(tmp_path / "out"), *recipes, cwd=here)
    assert r.returncode == 0, r.stderr[-3000:]
    plan = planned_dirs(r.stdout)
    # 6 rows run (Table 4's TiMiRec row shares Table 3's) and one pre-training: the rows that load one differ
    # only in stage-2 switches (TiMiRec.FINETUNE_ONLY), so they share it ("max pooling (ComiRec)" is itself
    # the stage-1 model, trained from scratch, and loads none; "joint train" loads none)
    assert len(plan) == len(set(plan)) == 7
    assert len([d for d in plan if "/pretrain/" in d]) == 1
    assert "share  timirec Table 4/default/TiMiRec seed 0" in r.stdout
    rows = {m for m in re.findall(r"/ablation/Table_\d/default/([^/\s]+)-s0", r.stdout)}
    assert len(rows) == 6 and "TiMiRec" in rows
    assert not list(here.iterdir()) and not (tmp_path / "out").exists()  # a dry run writes nothing


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
    # a stage-2-only switch (TiMiRec.FINETUNE_ONLY) reaches the fine-tuning, not the shared pre-training
    base = plan_cell(tim["models"], "TiMiRec", tim["datasets"]["default"], {}, tmp_path / "t0", 0, "g", opts)
    mean = plan_cell(tim["models"], "TiMiRec", tim["datasets"]["default"], {"aggregation": "mean", "T": 2.0},
                     tmp_path / "t1", 0, "g", opts)
    assert mean.cfg["model"]["init_args"]["aggregation"] == "mean"
    assert mean.pretrain.run_dir == base.pretrain.run_dir and mean.pretrain.cfg == base.pretrain.cfg


def test_data_root_rewrites_only_data_paths(tmp_path):
    assert resolve_path("data/amazon2018/X.csv", tmp_path) == tmp_path / "amazon2018" / "X.csv"
    assert resolve_path("~/data/ml-1m", tmp_path) == tmp_path / "ml-1m"
    assert resolve_path("~/.cache/zoo/raw/ml-100k", tmp_path) == Path("~/.cache/zoo/raw/ml-100k").expanduser()


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
                printed = ["{:.4f}"] + (["{:.2f}"] if table.get("scale") == 0.01 else [])  # % with 2 decimals (MIRACLE)
                for n in names:  # every value appears in the paper's table rows
                    for m, v in rows[n].items():
                        assert any(f.format(v) in line for f in printed for line in lines), (paper, ds, n, m, v)


def _finished(run: Run, metrics: dict) -> Run:
    run.run_dir.mkdir(parents=True, exist_ok=True)  # a fit step has made it for its claim already
    (run.run_dir / "test_metrics.json").write_text(json.dumps({"test": metrics, "epochs": 3}))
    (run.run_dir / "reproduce.json").write_text(json.dumps({"config_hash": run.hash, "seed": run.seed, "status": "done"}))
    return run


def test_a_run_already_made_for_another_table_is_shared_not_rerun(tmp_path):
    """The same baseline on the embedded default appears in HORAE's and MIRACLE's tables: the
    second table reuses the first one's finished run (same config hash and seed), and --force does not."""
    opts = Options(out=tmp_path, quiet=True)
    cfg = {"model": {"class_path": "zoo.models.sasrec.SASRec"}, "trainer": {"max_epochs": 1}}
    first = _finished(Run(cfg, tmp_path / "horae" / "default" / "SASRec-s0", 0, "g"), {"test/recall@10": 0.25})

    second = Run(cfg, tmp_path / "miracle" / "default" / "SASRec-s0", 0, "g")
    assert find_twin(second, [tmp_path]) == first.run_dir
    assert find_twin(Run(cfg, second.run_dir, 1, "g"), [tmp_path]) is None  # another seed
    other = Run({**cfg, "trainer": {"max_epochs": 2}}, second.run_dir, 0, "g")
    assert find_twin(other, [tmp_path]) is None  # another config
    cells = [Cell("miracle", "Table 2", "default", "SASRec", 0, second), Cell("horae", "Table 7", "default", "SASRec", 0, first)]
    steps = make_plan(cells, opts)
    assert [s.action for s in steps] == ["share", "reuse"] and steps[0].source == first.run_dir
    (first.run_dir / "ranks.npz").write_bytes(b"the twin's per-user ranks")
    outcomes = execute_plan(steps, opts)
    assert outcomes[second.run_dir]["status"] == "reused" and outcomes[second.run_dir]["twin_of"] == str(first.run_dir)
    assert json.loads((second.run_dir / "test_metrics.json").read_text())["test"]["test/recall@10"] == 0.25
    assert (second.run_dir / "ranks.npz").read_bytes() == b"the twin's per-user ranks"  # the ranks come along
    assert not [p.name for p in second.run_dir.iterdir() if p.name.startswith(".")]  # no temp file left
    assert outcomes[first.run_dir]["status"] == "reused" and outcomes[first.run_dir]["stale"] is False
    forced = make_plan(cells, Options(out=tmp_path, quiet=True, force=True))
    assert [s.action for s in forced] == ["run", "run"]  # --force re-runs, shares nothing
    third = Run(cfg, tmp_path / "hm4sr" / "default" / "SASRec-s0", 0, "g")
    assert find_twin(third, [tmp_path]) == first.run_dir  # a copy is never itself a source
    ablation_row = Run(cfg, tmp_path / "timirec" / "ablation" / "Table_4" / "default" / "SASRec-s0", 0, "g")
    assert find_twin(ablation_row, [tmp_path]) == first.run_dir  # an ablation row finds a main-table cell
    other_cfg = {**cfg, "trainer": {"max_epochs": 7}}
    in_ablation = _finished(Run(other_cfg, ablation_row.run_dir, 0, "g"), {})
    main_cell = Run(other_cfg, tmp_path / "timirec" / "default" / "SASRec-s0", 0, "g")
    assert find_twin(main_cell, [tmp_path]) == in_ablation.run_dir  # ... and the other way round
    main_cell.run_dir.mkdir(parents=True)
    (main_cell.run_dir / "ranks.npz").write_bytes(b"an older run's ranks")
    execute_plan(make_plan([Cell("timirec", "Table 2", "default", "SASRec", 0, main_cell)], opts), opts)
    assert (main_cell.run_dir / "test_metrics.json").is_file()  # a twin without ranks is shared without them
    assert not (main_cell.run_dir / "ranks.npz").exists()  # (its cells fall back to mean ± std), none left over
    elsewhere = tmp_path / "runs-ablate"
    assert find_twin(Run(cfg, elsewhere / "horae" / "ablation" / "T" / "default" / "SASRec-s0", 0, "g"),
                     [elsewhere, tmp_path]) == first.run_dir  # a finished cell in another --out is shared too
    # a re-run that was to replace this run died before it did: the old metrics are shown as stale
    (first.run_dir / "reproduce.json").write_text(json.dumps({"config_hash": first.hash, "seed": 0, "status": "running"}))
    assert make_plan([cells[1]], opts)[0].stale


def test_a_two_stage_cell_is_shared_across_out_folders(tmp_path):
    """A fine-tuning cell's config names its pre-training checkpoint under ``--out``; ``zoo ablate``
    (runs/ablate) still finds the full-model cell ``zoo reproduce`` (runs/reproduce) finished with
    the same pre-training (same folder name: same pre-training config and seed), and not one whose
    pre-training differs or a checkpoint the user gave."""
    import yaml

    from zoo.experiments.reproduce import config_hash, share_key

    def cfg(out: Path, pre: str = "horae_pretrain-7087f185-s0") -> dict:
        return {"model": {"class_path": "zoo.models.sasrec.SASRec",
                          "init_args": {"pretrained_ckpt": str(out / "pretrain" / pre / "last.ckpt")}}}

    done = _finished(Run(cfg(tmp_path / "reproduce"), tmp_path / "reproduce" / "horae" / "default" / "HORAE-s0", 0, "g"),
                     {"test/recall@10": 0.1})
    (done.run_dir / "recipe.yaml").write_text("# materialised\n" + yaml.safe_dump(done.cfg))
    roots = [tmp_path / "ablate", tmp_path / "reproduce"]
    row = Run(cfg(tmp_path / "ablate"), tmp_path / "ablate" / "horae" / "ablation" / "T8" / "default" / "HORAE-s0", 0, "g")
    assert row.hash != done.hash and share_key(row.cfg, 0) == share_key(done.cfg, 0)
    assert find_twin(row, roots) == done.run_dir
    [step] = make_plan([Cell("horae", "Table 8", "default", "HORAE", 0, row)], Options(out=roots[0], quiet=True, share=roots[1:]))
    assert step.action == "share" and step.source == done.run_dir  # no pre-training planned either
    other_pre = Run(cfg(tmp_path / "ablate", "horae_pretrain-0badc0de-s0"), row.run_dir, 0, "g")
    assert find_twin(other_pre, roots) is None
    given = {"model": {"class_path": "zoo.models.sasrec.SASRec", "init_args": {"pretrained_ckpt": "/my/model.ckpt"}}}
    assert share_key(given, 0) == config_hash(given, 0)  # a user's checkpoint is part of the config as it is
    (done.run_dir / "recipe.yaml").write_text(yaml.safe_dump(cfg(tmp_path / "elsewhere", "x-0badc0de-s0")))
    assert find_twin(row, roots) is None  # a recipe.yaml that is not the stored hash's config: the stored hash


def test_a_run_made_before_a_code_default_changed_is_stale_not_reused_shared_or_resumed(tmp_path):
    """The config hash covers the recipe only.  A finished run whose saved config.yaml holds another
    value for an argument the recipe leaves to the class (a default changed by a fix since it ran)
    is reported stale, naming the argument, and is neither shared with another table nor resumed;
    an argument added after it ran (absent from its config.yaml) or one equal to today's default is
    no difference."""
    from zoo.experiments.reproduce import changed_defaults, plan_text

    opts = Options(out=tmp_path, quiet=True)
    cfg = {"model": {"class_path": "zoo.models.sasrec.SASRec", "init_args": {"d": 16}}, "trainer": {"max_epochs": 1}}

    def saved(run_dir: Path, **init_args) -> None:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(
            {"model": {"class_path": "zoo.models.sasrec.SASRec", "init_args": {"d": 16, **init_args}}}))

    today = _finished(Run(cfg, tmp_path / "horae" / "default" / "SASRec-s0", 0, "g"), {"test/recall@10": 0.2})
    saved(today.run_dir, dropout=0.2, topk=[10, 20, 50], n_heads=2)  # today's defaults (a tuple saved as a list)
    assert changed_defaults(today.run_dir, cfg) == []
    [step] = make_plan([Cell("horae", "Table 7", "default", "SASRec", 0, today)], opts)
    assert step.action == "reuse" and not step.stale

    saved(today.run_dir, dropout=0.5, n_heads=2, d=99)  # dropout's default was 0.5 when it ran; d is the recipe's
    assert changed_defaults(today.run_dir, cfg) == ["model.init_args.dropout: ran 0.5, now 0.2"]
    [step] = make_plan([Cell("horae", "Table 7", "default", "SASRec", 0, today)], opts)
    assert step.action == "reuse" and step.stale
    assert "STALE: code defaults changed since it ran: model.init_args.dropout: ran 0.5, now 0.2" in plan_text([step], opts)
    assert execute_plan([step], opts)[today.run_dir]["stale"] is True  # the table marks it

    other = Run(cfg, tmp_path / "miracle" / "default" / "SASRec-s0", 0, "g")  # same hash and seed
    assert find_twin(other, [tmp_path]) == today.run_dir
    [step] = make_plan([Cell("miracle", "Table 2", "default", "SASRec", 0, other)], opts)
    assert step.action == "run"  # not shared: the twin is another model now

    half = Run(cfg, tmp_path / "hm4sr" / "default" / "SASRec-s0", 0, "g")
    half.run_dir.mkdir(parents=True)
    (half.run_dir / "last.ckpt").write_bytes(b"a checkpoint")
    (half.run_dir / "reproduce.json").write_text(json.dumps({"config_hash": half.hash, "seed": 0, "status": "running"}))
    saved(half.run_dir, dropout=0.2)
    plan = [s for s in make_plan([Cell("hm4sr", "T", "default", "SASRec", 0, half)], opts) if s.run.run_dir == half.run_dir]
    assert [s.action for s in plan] == ["resume"]
    saved(half.run_dir, dropout=0.5)
    plan = [s for s in make_plan([Cell("hm4sr", "T", "default", "SASRec", 0, half)], opts) if s.run.run_dir == half.run_dir]
    assert [s.action for s in plan] == ["run"]  # its checkpoint is the old model's: start afresh


def test_archive_keeps_a_finished_tables_records_and_restores_them_where_out_is_gone(tmp_path, monkeypatch):
    """``--archive DIR``: every finished cell's record (metrics, per-user ranks, config, CSV logs; no
    checkpoint) is kept in DIR, a shared cell with its twin's whole record; with ``--out`` deleted (a
    new machine), the next plan restores those cells instead of fitting them, the table reads the same
    metrics and ranks, and nothing is fitted; a record whose code defaults changed since, another seed,
    or ``--force`` is fitted again."""
    import zoo.experiments.reproduce as R

    def opts_for(out: Path, **kw) -> Options:
        return Options(out=out, archive=tmp_path / "archive", quiet=True, **kw)

    fitted: list[Path] = []

    def fake_fit(step, n, opts):
        fitted.append(step.run.run_dir)
        run = _finished(step.run, {"test/recall@10": 0.5 + step.run.seed / 10})
        (run.run_dir / "ranks.npz").write_bytes(b"ranks of seed %d" % run.seed)
        (run.run_dir / "recipe.yaml").write_text(yaml.safe_dump(run.cfg))
        (run.run_dir / "config.yaml").write_text(yaml.safe_dump({"model": run.cfg["model"]}))
        (run.run_dir / "logs" / "version_0").mkdir(parents=True)
        (run.run_dir / "logs" / "version_0" / "metrics.csv").write_text("epoch,val/recall@10\n0,0.4\n")
        (run.run_dir / "last.ckpt").write_bytes(b"a checkpoint")
        return {"status": "done", "config_hash": run.hash}

    monkeypatch.setattr(R, "fit", fake_fit)
    cfg = {"model": {"class_path": "zoo.models.sasrec.SASRec", "init_args": {"d": 16}}, "trainer": {"max_epochs": 1}}
    out = tmp_path / "out"

    def cells(out: Path, seeds=(0, 1)) -> list[Cell]:
        return [Cell(p, "T", "default", "SASRec", s, Run(cfg, out / p / "default" / f"SASRec-s{s}", s, "g"))
                for p in ("horae", "miracle") for s in seeds]  # miracle's cells share horae's runs

    first = R.run_cells(cells(out), opts_for(out))
    assert len(fitted) == 2 and [r["status"] for r in first] == ["done"] * 4
    for p in ("horae", "miracle"):
        kept = tmp_path / "archive" / p / "default" / "SASRec-s1"
        assert sorted(str(f.relative_to(kept)) for f in kept.rglob("*") if f.is_file()) == [
            "config.yaml", "logs/version_0/metrics.csv", "ranks.npz", "recipe.yaml", "reproduce.json", "test_metrics.json"]
        assert (kept / "ranks.npz").read_bytes() == b"ranks of seed 1"
        assert "twin_of" not in json.loads((kept / "reproduce.json").read_text())  # a whole record, not a copy

    fitted.clear()
    new_out = tmp_path / "new-machine"  # the first --out is gone
    killed = new_out / "horae" / "default" / "SASRec-s0"  # ... but one cell holds a killed fit of its own
    killed.mkdir(parents=True)
    for name in ("best.ckpt", "last.ckpt"):
        (killed / name).write_bytes(b"an unfinished fit's checkpoint")
    (killed / "reproduce.json").write_text(json.dumps({"config_hash": Run(cfg, killed, 0, "g").hash, "seed": 0,
                                                        "status": "running"}))
    steps = make_plan(cells(new_out), opts_for(new_out))
    assert [s.action for s in steps] == ["restore"] * 4
    again = R.run_cells(cells(new_out), opts_for(new_out))
    assert not (killed / "best.ckpt").exists() and not (killed / "last.ckpt").exists()  # not taken for the record's
    assert fitted == [] and [r["test/recall@10"] for r in again] == [r["test/recall@10"] for r in first]
    restored = new_out / "miracle" / "default" / "SASRec-s1"
    assert (restored / "ranks.npz").read_bytes() == b"ranks of seed 1" and not (restored / "last.ckpt").exists()
    assert (restored / "logs" / "version_0" / "metrics.csv").is_file()  # the curves and time estimates have it
    assert [s.action for s in make_plan(cells(new_out), opts_for(new_out))] == ["reuse"] * 4  # now here
    assert not [p for p in (tmp_path / "archive").rglob("*") if p.name.startswith(".")]  # no temp file left

    third = tmp_path / "third"
    assert [s.action for s in make_plan(cells(third, seeds=(2,)), opts_for(third))] == ["run", "share"]
    assert [s.action for s in make_plan(cells(third), opts_for(third, force=True))] == ["run"] * 4
    changed = tmp_path / "archive" / "horae" / "default" / "SASRec-s0" / "config.yaml"
    changed.write_text(yaml.safe_dump({"model": {**cfg["model"], "init_args": {"d": 16, "dropout": 0.9}}}))
    plan = make_plan(cells(third, seeds=(0,)), opts_for(third))
    assert [s.action for s in plan] == ["run", "share"]  # its model is not today's: fitted again


def test_archive_unfinished_carries_a_stopped_fit_to_another_machine_and_resumes_it(tmp_path, monkeypatch, capsys):
    """``--archive DIR --archive-unfinished``: a fit stopped mid-table (the session ends) leaves its
    checkpoints, configs and CSV logs in ``DIR/<cell>/unfinished/``; a plan with a fresh ``--out``
    (another machine) resumes it from there with ``--ckpt_path last`` instead of starting again, and
    the finished record replaces the kept fit.  Without the flag nothing but finished records is kept;
    another config, or ``--force``, starts afresh."""
    import zoo.experiments.reproduce as R

    commands: list[list[str]] = []

    def fake_watch(cmd, logf, env, step, n, opts, t0):
        commands.append(cmd)
        run_dir = step.run.run_dir
        if "--ckpt_path" not in cmd:  # a fresh fit: one epoch, then the session ends
            (run_dir / "logs" / "version_0").mkdir(parents=True)
            (run_dir / "logs" / "version_0" / "metrics.csv").write_text("epoch,step,val/ndcg@10\n0,9,0.1\n")
            (run_dir / "config.yaml").write_text(yaml.safe_dump({"model": step.run.cfg["model"]}))
            (run_dir / "best.ckpt").write_bytes(b"best after epoch 0")
            (run_dir / "last.ckpt").write_bytes(b"last after epoch 0")
            raise KeyboardInterrupt
        assert (run_dir / "last.ckpt").read_bytes() == b"last after epoch 0"  # the kept fit, in place
        assert (run_dir / "best.ckpt").read_bytes() == b"best after epoch 0"
        assert (run_dir / "logs" / "version_0" / "metrics.csv").is_file()
        (run_dir / "logs" / "version_1").mkdir(parents=True)
        (run_dir / "logs" / "version_1" / "metrics.csv").write_text("epoch,step,val/ndcg@10\n1,19,0.2\n")
        (run_dir / "ranks.npz").write_bytes(b"ranks")
        (run_dir / "test_metrics.json").write_text(json.dumps({"test": {"test/ndcg@10": 0.3}, "epochs": 2}))
        return 0

    monkeypatch.setattr(R, "_watch", fake_watch)
    cfg = {"model": {"class_path": "zoo.models.sasrec.SASRec", "init_args": {"d": 16}}, "trainer": {"max_epochs": 2}}
    archive = tmp_path / "archive"
    kept = archive / "hm4sr" / "default" / "SASRec-s0" / "unfinished"

    def cells(out: Path, c: dict = cfg) -> list[Cell]:
        return [Cell("hm4sr", "T", "default", "SASRec", 0, Run(c, out / "hm4sr" / "default" / "SASRec-s0", 0, "g"))]

    with pytest.raises(KeyboardInterrupt):  # --archive alone: an unfinished fit is not kept
        R.run_cells(cells(tmp_path / "a"), Options(out=tmp_path / "a", archive=archive, quiet=True))
    assert not kept.exists()
    with pytest.raises(KeyboardInterrupt):
        R.run_cells(cells(tmp_path / "b"), Options(out=tmp_path / "b", archive=archive, archive_unfinished=True,
                                                   quiet=True))
    assert sorted(str(f.relative_to(kept)) for f in kept.rglob("*") if f.is_file()) == [
        "best.ckpt", "config.yaml", "last.ckpt", "logs/version_0/metrics.csv", "recipe.yaml", "reproduce.json"]
    meta = json.loads((kept / "reproduce.json").read_text())
    assert meta["status"] == "unfinished" and meta["epochs_done"] == 1 and meta["seed"] == 0
    assert not (kept.parent / "test_metrics.json").exists()  # no finished record

    new = Options(out=tmp_path / "new-machine", archive=archive, archive_unfinished=True, quiet=True)
    [step] = make_plan(cells(new.out), new)
    assert step.action == "resume" and step.source == kept
    assert "1 of 2 epochs left" in step.basis and f"the unfinished fit kept in {kept}" in R.plan_text([step], new)
    assert [s.action for s in make_plan(cells(new.out), Options(out=new.out, archive=archive, force=True))] == ["run"]
    other = {**cfg, "model": {**cfg["model"], "init_args": {"d": 32}}}
    assert [s.action for s in make_plan(cells(new.out, other), new)] == ["run"]  # another model's checkpoint

    commands.clear()
    [row] = R.run_cells(cells(new.out), new)
    assert row["status"] == "done" and row["test/ndcg@10"] == 0.3
    assert len(commands) == 1 and commands[0][-2:] == ["--ckpt_path", "last"]
    assert not kept.exists()  # the finished record replaced it
    record = kept.parent
    assert sorted(str(f.relative_to(record)) for f in record.rglob("*") if f.is_file()) == [
        "config.yaml", "logs/version_0/metrics.csv", "logs/version_1/metrics.csv", "ranks.npz", "recipe.yaml",
        "reproduce.json", "test_metrics.json"]
    assert not [p for p in archive.rglob("*") if p.name.startswith(".")]  # no temp file left
    assert R.main(["--paper", "hm4sr", "--archive-unfinished", "--dry-run"]) != 0
    assert "--archive-unfinished keeps unfinished fits in --archive's folder: give --archive DIR too" in capsys.readouterr().err


def test_a_variant_run_with_set_never_replaces_the_tables_archived_record(tmp_path, monkeypatch):
    """``--set`` (or ``--max-epochs``, ``--limit-train-batches``) with a table's ``--archive``: the
    variant's run has the cell's folder name, and keeping it would replace the table's record there;
    it is not kept, and the log says why.  A record of the recipe's own changed config replaces the
    old one (the recipe changed since), and a variant is kept where no record stands."""
    import zoo.experiments.reproduce as R

    def fake_fit(step, n, opts):
        run = _finished(step.run, {"test/hr@10": 0.5})
        (run.run_dir / "recipe.yaml").write_text(yaml.safe_dump(run.cfg))
        return {"status": "done", "config_hash": run.hash}

    monkeypatch.setattr(R, "fit", fake_fit)
    archive, logged = tmp_path / "archive", []
    recipe = {"model": {"class_path": "zoo.models.sasrec.SASRec", "init_args": {"d": 16}}, "trainer": {"max_epochs": 1}}
    variant = {**recipe, "model": {**recipe["model"], "init_args": {"d": 16, "loss": "bpr"}}}
    changed = {**recipe, "trainer": {"max_epochs": 2}}

    def run(cfg: dict, out: str, **kw) -> Path:
        opts = Options(out=tmp_path / out, archive=archive, quiet=True, **kw)
        opts.log = logged.append
        R.run_cells([Cell("timirec", "T", "default", "SASRec", 0,
                          Run(cfg, tmp_path / out / "timirec" / "default" / "SASRec-s0", 0, "g"))], opts)
        return archive / "timirec" / "default" / "SASRec-s0"

    kept = run(recipe, "a")
    table_hash = json.loads((kept / "reproduce.json").read_text())["config_hash"]
    run(variant, "b", sets=[("model.init_args.loss", "bpr")])
    assert json.loads((kept / "reproduce.json").read_text())["config_hash"] == table_hash  # not replaced
    assert any("NOT KEPT in the archive" in m and "--set" in m for m in logged)
    run(changed, "c")  # the recipe itself changed: its new record replaces the old one
    assert json.loads((kept / "reproduce.json").read_text())["config_hash"] == R.config_hash(changed, 0)
    other = tmp_path / "variants"
    opts = Options(out=tmp_path / "d", archive=other, quiet=True, sets=[("model.init_args.loss", "bpr")])
    R.run_cells([Cell("timirec", "T", "default", "SASRec", 0,
                      Run(variant, tmp_path / "d" / "timirec" / "default" / "SASRec-s0", 0, "g"))], opts)
    assert (other / "timirec" / "default" / "SASRec-s0" / "test_metrics.json").is_file()


def test_a_run_finished_by_another_process_after_the_plan_is_reused_not_rerun(tmp_path, monkeypatch):
    """Two ``zoo reproduce`` invocations sharing a table's seeds: a run the other one finished
    after this plan was made is reused when its turn comes (same config), never fitted again over
    the other's results; another config's finished run, or ``--force``, still runs."""
    import zoo.experiments.reproduce as R

    fitted: list[Path] = []
    monkeypatch.setattr(R, "fit", lambda step, n, opts: (fitted.append(step.run.run_dir), {"status": "done"})[1])
    cfg = {"model": {"class_path": "zoo.models.sasrec.SASRec"}, "trainer": {"max_epochs": 1}}
    for force in (False, True):
        out = tmp_path / f"force-{force}"
        opts = Options(out=out, quiet=True, force=force)
        same, other = Run(cfg, out / "t" / "default" / "SASRec-s0", 0, "g"), Run(cfg, out / "t" / "default" / "SASRec-s1", 1, "g")
        steps = make_plan([Cell("timirec", "Table 2", "default", "SASRec", 0, same),
                           Cell("timirec", "Table 2", "default", "SASRec", 1, other)], opts)
        assert [s.action for s in steps] == ["run", "run"]
        _finished(same, {"test/ndcg@5": 0.14})  # ... by the other invocation, meanwhile
        _finished(Run({**cfg, "trainer": {"max_epochs": 2}}, other.run_dir, 1, "g"), {})  # another config's run
        fitted.clear()
        outcomes = execute_plan(steps, opts)
        if force:
            assert fitted == [same.run_dir, other.run_dir]
        else:
            assert fitted == [other.run_dir] and outcomes[same.run_dir]["status"] == "reused"


@pytest.mark.parametrize("other_finishes", [True, False], ids=["other-finishes", "other-is-killed"])
def test_a_cell_another_process_is_fitting_waits_for_the_rest_of_the_plan_then_is_reused(tmp_path, monkeypatch,
                                                                                          other_finishes):
    """Two invocations planned on the same folders: a cell (and a cell loading a pre-training) whose
    folder another process holds right now is not fitted into that folder (its fit would fail on
    the lock and write "failed" over the other's record); the rest of the plan runs first, then it
    waits for the folder, and is reused when the other process finished it, fitted when it died."""
    import threading

    import zoo.experiments.reproduce as R
    from zoo.runfiles import RunLock

    fitted: list[Path] = []

    def fake_fit(step, n, opts):
        fitted.append(step.run.run_dir)
        return {"status": "done"}

    monkeypatch.setattr(R, "fit", fake_fit)
    monkeypatch.setattr(R, "BUSY_POLL_S", 0.02)
    cfg = {"model": {"class_path": "zoo.models.sasrec.SASRec"}, "trainer": {"max_epochs": 1}}
    opts = Options(out=tmp_path, quiet=True)
    held = Run(cfg, tmp_path / "t" / "default" / "SASRec-s0", 0, "g")
    free = Run(cfg, tmp_path / "t" / "default" / "SASRec-s1", 1, "g")
    pre = Run({"model": {"class_path": "zoo.models.timirec.TiMiRec"}}, tmp_path / "pretrain" / "p-s0", 0, "g", "pretrain")
    loads = Run({**cfg, "x": 1}, tmp_path / "t" / "default" / "TiMiRec-s0", 0, "g", pretrain=pre)
    steps = make_plan([Cell("t", "T", "default", "SASRec", 0, held), Cell("t", "T", "default", "TiMiRec", 0, loads),
                       Cell("t", "T", "default", "SASRec", 1, free)], opts)
    assert [(s.action, s.run.run_dir) for s in steps] == [
        ("run", held.run_dir), ("run", pre.run_dir), ("run", loads.run_dir), ("run", free.run_dir)]
    locks = [RunLock(held.run_dir).acquire(), RunLock(pre.run_dir).acquire()]  # the other invocation's fits
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(execute_plan(steps, opts)))
    worker.start()
    for _ in range(500):
        if fitted:
            break
        threading.Event().wait(0.01)
    threading.Event().wait(0.1)
    assert fitted == [free.run_dir] and worker.is_alive()  # the free cell ran; the others wait
    for run, lock in zip((held, pre), locks):
        if other_finishes:
            (run.run_dir / "test_metrics.json").write_text(json.dumps({"test": {}, "epochs": 3}))
            (run.run_dir / "reproduce.json").write_text(json.dumps({"config_hash": run.hash, "seed": run.seed,
                                                                     "status": "done"}))
        lock.release()
    worker.join(10)
    assert not worker.is_alive()
    if other_finishes:
        assert fitted == [free.run_dir, loads.run_dir]
        assert result[held.run_dir]["status"] == result[pre.run_dir]["status"] == "reused"
    else:
        assert fitted == [free.run_dir, held.run_dir, pre.run_dir, loads.run_dir]


@pytest.mark.parametrize("other_finishes", [True, False], ids=["other-finishes", "other-is-killed"])
def test_two_invocations_that_both_found_a_folder_free_fit_it_once(tmp_path, monkeypatch, other_finishes):
    """The race the busy check leaves: two invocations see a folder free at the same moment.  The fit
    step first takes the folder's claim (.reproduce.lock) atomically; the loser waits (it never
    writes "running"/"failed" into the winner's folder), then reuses the winner's finished run, or
    fits it if the winner died without finishing."""
    import threading

    import zoo.experiments.reproduce as R
    from zoo.runfiles import CLAIM_NAME, LOCK_NAME, RunLock

    assert R._busy.__defaults__[0] == (CLAIM_NAME, LOCK_NAME)
    fitted: list[Path] = []
    monkeypatch.setattr(R, "fit", lambda step, n, opts: (fitted.append(step.run.run_dir), {"status": "done"})[1])
    monkeypatch.setattr(R, "BUSY_POLL_S", 0.02)
    cfg = {"model": {"class_path": "zoo.models.sasrec.SASRec"}, "trainer": {"max_epochs": 1}}
    run = Run(cfg, tmp_path / "t" / "default" / "SASRec-s0", 0, "g")
    [step] = make_plan([Cell("t", "T", "default", "SASRec", 0, run)], Options(out=tmp_path, quiet=True))
    winner = RunLock(run.run_dir, CLAIM_NAME).acquire()  # the other invocation claimed it after our check
    assert R._busy(run.run_dir) is not None and R._busy(run.run_dir, (LOCK_NAME,)) is None
    result: dict = {}
    loser = threading.Thread(target=lambda: result.update(R._run_step(step, {}, 1, Options(out=tmp_path, quiet=True))))
    loser.start()
    threading.Event().wait(0.2)
    assert loser.is_alive() and fitted == [] and not (run.run_dir / "reproduce.json").exists()
    if other_finishes:
        (run.run_dir / "test_metrics.json").write_text(json.dumps({"test": {}, "epochs": 3}))
        (run.run_dir / "reproduce.json").write_text(json.dumps({"config_hash": run.hash, "seed": 0, "status": "done"}))
    winner.release()
    loser.join(10)
    assert not loser.is_alive()
    assert (result["status"], fitted) == (("reused", []) if other_finishes else ("done", [run.run_dir]))
    assert not (run.run_dir / CLAIM_NAME).exists()  # released by whoever held it


def test_a_cell_planned_earlier_in_the_same_plan_is_shared_and_each_pretraining_runs_once(tmp_path):
    """Two cells with one config and seed: the first runs, the second shares it (not a second fit);
    two cells loading one pre-training: it is planned once, before the first of them."""
    opts = Options(out=tmp_path, quiet=True)
    cfg = {"model": {"class_path": "zoo.models.timirec.TiMiRec"}, "trainer": {"max_epochs": 2}}
    pre = Run({"model": {"class_path": "zoo.models.timirec.TiMiRec"}}, tmp_path / "pretrain" / "p-s0", 0, "g", "pretrain")
    a = Run(cfg, tmp_path / "timirec" / "ablation" / "Table_3" / "default" / "TiMiRec-s0", 0, "g", pretrain=pre)
    b = Run(cfg, tmp_path / "timirec" / "ablation" / "Table_4" / "default" / "TiMiRec-s0", 0, "g", pretrain=pre)
    c = Run({**cfg, "x": 1}, tmp_path / "timirec" / "ablation" / "Table_4" / "default" / "other-s0", 0, "g", pretrain=pre)
    steps = make_plan([Cell("timirec", "Table 3", "default", "TiMiRec", 0, a),
                       Cell("timirec", "Table 4", "default", "TiMiRec", 0, b),
                       Cell("timirec", "Table 4", "default", "other", 0, c)], opts)
    assert [(s.action, s.run.run_dir) for s in steps] == [
        ("run", pre.run_dir), ("run", a.run_dir), ("share", b.run_dir), ("run", c.run_dir)]
    assert [s.index for s in steps if s.fits] == [1, 2, 3] and steps[2].source == a.run_dir
    assert all(s.estimate_s and s.estimate_s > 0 for s in steps if s.fits)


def test_reproduction_doc_matches_the_numbers_file_and_the_cli():
    """docs/reproduction.md lists every table, dataset and row of paper_numbers.yaml, and every flag
    of `zoo reproduce` / `zoo ablate`."""
    from zoo.experiments import ablate, reproduce
    from zoo.experiments.reproduce import main_rows

    doc = (ROOT / "docs" / "reproduction.md").read_text()
    lines = doc.splitlines()
    numbers = load_numbers()
    for paper in ("horae", "miracle", "timirec", "hpcl4sr", "hm4sr"):
        main = numbers[paper]["main"]
        rows, missing = main_rows(paper, numbers, None)
        line = next(l for l in lines if l.startswith(f"| {paper} | {main['table']} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert [d.strip().split(" (")[0] for d in cells[2].split(",")] == list(main["datasets"]), paper
        assert [r.strip() for r in cells[3].split(",")] == rows and [r.strip() for r in cells[4].split(",")] == missing
        for abl in numbers[paper].get("ablations") or []:
            line = next(l for l in lines if l.startswith(f"| {paper} | {abl['table']} |"))
            assert line.rstrip(" |").endswith(", ".join(abl["rows"])), (paper, abl["table"])
    import argparse
    for mod in (reproduce, ablate):
        parser = None
        orig = argparse.ArgumentParser.parse_args

        def grab(self, *a, **k):
            nonlocal parser
            parser = self
            raise SystemExit(0)

        argparse.ArgumentParser.parse_args = grab
        try:
            with pytest.raises(SystemExit):
                mod.main([])
        finally:
            argparse.ArgumentParser.parse_args = orig
        flags = [o for a in parser._actions for o in a.option_strings if o.startswith("--") and o != "--help"]
        assert flags and all(f"`{f}" in doc for f in flags), [f for f in flags if f"`{f}" not in doc]


def test_force_rerun_overwrites_and_a_killed_run_resumes_from_last(reduced):
    """A finished run re-run under --force passes `--overwrite true` to its fit (the folder holds the old
    run, which the fit refuses otherwise); a fit killed after its checkpoints resumes with `--ckpt_path last`."""
    out, args, _ = reduced
    pop = out / "horae" / "default" / "Pop-s0"
    before = (pop / "test_metrics.json").stat().st_mtime_ns
    forced = zoo(*[a if a != "SASRec" else "Pop" for a in args], "--force")
    assert forced.returncode == 0, forced.stdout[-3000:] + forced.stderr[-3000:]
    assert started_dirs(forced.stdout) == [str(pop)]
    assert (pop / "test_metrics.json").stat().st_mtime_ns > before and (pop / "ranks.npz").is_file()
    assert "--overwrite true" in (pop / "zoo.log").read_text().rsplit("\n$ ", 1)[1].splitlines()[0]
    sas = out / "horae" / "default" / "SASRec-s0"
    for f in ("test_metrics.json", "ranks.npz"):  # as a kill during the test after fit leaves it
        (sas / f).unlink()
    resumed = zoo(*args)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert re.search(r"\[1/1\] resume .*SASRec", resumed.stdout) and started_dirs(resumed.stdout) == [str(sas)]
    cmd = (sas / "zoo.log").read_text().rsplit("\n$ ", 1)[1].splitlines()[0]
    assert cmd.endswith("--ckpt_path last") and "--overwrite" not in cmd
    assert (sas / "test_metrics.json").is_file() and (sas / "ranks.npz").is_file()


def _synthetic_cell(root: Path, row: str, cls: str, seed: int, ranks: list[int] | None, users: list[str]) -> Cell:
    """A finished reproduce cell folder: test_metrics.json (the metrics of ``ranks``), reproduce.json and,
    unless ``ranks`` is None (a run tested before per-user ranks), ranks.npz."""
    from zoo.ranks import Ranks, per_user, save_ranks

    rk = Ranks("full", np.asarray(users), np.asarray(ranks if ranks is not None else [3] * len(users)), 300, [10, 50])
    cfg = {"seed_everything": seed, "monitor": "val/recall@10", "model": {"class_path": cls, "init_args": {"d": 8}},
           "data": {"init_args": {"seed": seed}}, "trainer": {"max_epochs": 40}}
    run = _finished(Run(cfg, root / "horae" / "default" / f"{row}-s{seed}", seed, "g"),
                    {f"test/{m}": float(per_user(rk, m).mean()) for m in rk.metric_names()})
    blob = json.loads((run.run_dir / "test_metrics.json").read_text())
    (run.run_dir / "test_metrics.json").write_text(json.dumps({**blob, "config": cfg}))
    if ranks is not None:
        save_ranks(run.run_dir / "ranks.npz", rk)
    return Cell("horae", "Table 7", "default", row, seed, run)


def test_table_cells_are_compare_runs_statistics(tmp_path):
    """Golden: the table of run folders with fixed ranks shows, per cell, compare_runs' mean [CI] ± seed std
    over the same folders and its paired test against the best baseline (Holm over the table); a row
    without ranks.npz falls back to mean ± std over seeds, marked †, and stays out of the test."""
    from zoo.experiments.compare import compare_runs
    from zoo.experiments.reproduce import N_BOOT, STATS_SEED, markdown_table, record

    users = [f"u{i}" for i in range(40)]
    base = np.random.default_rng(3).integers(0, 120, 40)
    cells = [_synthetic_cell(tmp_path, "SASRec", "zoo.models.sasrec.SASRec", s, list(base + 2 * s), users)
             for s in (0, 1)]
    cells += [_synthetic_cell(tmp_path, "Pop", "zoo.models.pop.Pop", 0, list(base + 30), users),
              _synthetic_cell(tmp_path, "HORAE", "zoo.models.horae.HORAE", 0, list(np.maximum(base - 20, 0)), users),
              _synthetic_cell(tmp_path, "MIND", "zoo.models.mind.MIND", 0, None, users)]
    records = [record(c, {"status": "done"}) for c in cells]
    table = load_numbers()["horae"]["main"]
    md = markdown_table("horae", table, ["HORAE", "SASRec", "MIND", "Pop"], records, "# header\n")
    ref = compare_runs([c.run.run_dir for row in ("HORAE", "SASRec", "Pop") for c in cells if c.row == row],
                       metrics=list(table["metrics"]),
                       n_boot=N_BOOT, seed=STATS_SEED)
    results, paired = md.split("Paired test")
    lines = {l.split(" |")[0][2:]: l for l in results.splitlines() if l.startswith("| ")}
    sas = ref.row("SASRec", "recall@10")
    assert ref.reference == "SASRec" and sas.n_seeds == 2
    assert f"{sas.mean:.4f} [{sas.ci_low:.4f}, {sas.ci_high:.4f}] ± {sas.seed_std:.4f} · paper" in lines["SASRec (reference)"]
    hor = ref.row("HORAE", "ndcg@50")
    assert f"{hor.mean:.4f} [{hor.ci_low:.4f}, {hor.ci_high:.4f}] · paper" in lines["HORAE"]
    assert f"p_Holm={'%.2g' % hor.p_holm if hor.p_holm >= 1e-3 else '%.1e' % hor.p_holm}" in md
    assert "Paired test" + paired == ref.paired_markdown()  # the whole paired block, Holm over the 8 tests
    mind = json.loads((cells[-1].run.run_dir / "test_metrics.json").read_text())["test"]["test/recall@10"]
    assert re.search(rf"^\| MIND \| {mind:.4f} † · paper ", md, re.M) and "† not every run of this row has its per-user ranks" in md
    assert "| MIND |" not in paired


def test_fit_command_resumes_with_last_and_overwrites_only_an_earlier_run(tmp_path):
    """The resume fallback (an unreadable last.ckpt) starts afresh over the killed run's files: --overwrite true."""
    from zoo.experiments.reproduce import fit_command

    run, opts = Run({}, tmp_path / "cell-s0", 0, "g"), Options(out=tmp_path, quiet=True)
    assert "--overwrite" not in fit_command(run, opts, False)  # a new folder: nothing to replace
    run.run_dir.mkdir()
    (run.run_dir / "last.ckpt").write_bytes(b"cut off by a kill")
    assert fit_command(run, opts, True)[-2:] == ["--ckpt_path", "last"]
    assert fit_command(run, opts, False)[-2:] == ["--overwrite", "true"]
    steps = Options(out=tmp_path, quiet=True, last_every_n_steps=50)  # --last-every-n-steps 50: both ways
    for resume in (True, False):
        cmd = fit_command(run, steps, resume)
        assert cmd[cmd.index("--last_every_n_steps") + 1] == "50"
    assert "--last_every_n_steps" not in fit_command(run, opts, True)


def test_last_every_n_steps_reaches_options_and_a_negative_one_is_refused():
    from zoo.experiments.reproduce import DEFAULT_OUT, common_parser, options_from

    ap = common_parser("zoo reproduce", "", DEFAULT_OUT)
    assert options_from(ap.parse_args(["--last-every-n-steps", "200"]), "zoo reproduce").last_every_n_steps == 200
    assert options_from(ap.parse_args([]), "zoo reproduce").last_every_n_steps == 0
    with pytest.raises(ValueError, match="--last-every-n-steps must be >= 0"):
        options_from(ap.parse_args(["--last-every-n-steps", "-1"]), "zoo reproduce")


def test_a_paper_that_tests_within_blocks_gets_each_blocks_claim_tested_against_that_blocks_best(tmp_path):
    """TiMiRec's claim is per block (significance.blocks): TiMiRec against the best of GRU4Rec/MIND/...,
    TiMiRec+ against the best of SASRec/...  The table adds, per block, compare's paired test of the
    paper model against the best baseline *of that block* over those two rows only (Holm over the
    claim's metrics), beside the table-wide test against the best baseline overall."""
    from zoo.experiments.compare import compare_runs
    from zoo.experiments.reproduce import N_BOOT, STATS_SEED, markdown_table, record

    users = [f"u{i}" for i in range(60)]
    base = np.random.default_rng(5).integers(0, 25, 60)
    spec = {"GRU4Rec": ("zoo.models.gru4rec.GRU4Rec", base + 10), "MIND": ("zoo.models.mind.MIND", base + 25),
            "TiMiRec": ("zoo.models.timirec.TiMiRec", base + 14), "SASRec": ("zoo.models.sasrec.SASRec", np.maximum(base - 5, 0)),
            "TiMiRec+": ("zoo.models.timirec.TiMiRec", np.maximum(base - 8, 0))}
    cells = {row: _synthetic_cell(tmp_path, row, cls, 0, list(r), users) for row, (cls, r) in spec.items()}
    # TiMiRec+ differs from TiMiRec by its config, as in the recipes (transformer: true)
    cfg_file = cells["TiMiRec+"].run.run_dir / "test_metrics.json"
    blob = json.loads(cfg_file.read_text())
    blob["config"]["model"]["init_args"]["transformer"] = True
    cfg_file.write_text(json.dumps(blob))
    records = [record(c, {"status": "done"}) for c in cells.values()]
    table = load_numbers()["timirec"]["main"]
    metrics = list(table["metrics"])
    md = markdown_table("timirec", table, list(spec), records, "# header\n")
    overall, *claims = md.split("**The paper's claim for ")
    assert "Paired test against **SASRec** (the best baseline on hr@5)" in overall  # primary: the first metric
    assert [c.split("**")[0] for c in claims] == ["TiMiRec", "TiMiRec+"]
    for claim, model, best, other in ((claims[0], "TiMiRec", "GRU4Rec", "MIND"), (claims[1], "TiMiRec+", "SASRec", None)):
        assert f"Paired test against **{best}** (the best on hr@5 of this block's baselines:" in claim
        pair = compare_runs([cells[model].run.run_dir, cells[best].run.run_dir], reference=cells[best].run.run_dir,
                            metrics=metrics, n_boot=N_BOOT, seed=STATS_SEED)
        expected = next(l for l in pair.paired_markdown().splitlines() if l.startswith("| "))  # the header row
        lines = [l for l in pair.paired_markdown().splitlines() if l.startswith("| ") and not l.startswith("| model")]
        assert len(lines) == 1 and lines[0].replace(lines[0].split(" |")[0], f"| {model}", 1) in claim, claim
        assert f"Holm-corrected over all {len(metrics)} tests" in claim and expected in claim
        if other:
            assert f"| {other} |" not in claim


def test_set_reaches_every_model_whose_class_takes_the_argument_and_a_key_no_model_takes_is_reported(capsys):
    """`--set model.init_args.loss=bpr` on GRU4Rec, whose recipe does not spell `loss` out, sets it
    (it was skipped silently, so a "BPR" run was the cross-entropy one); Pop, whose class has no
    `loss`, is left alone; a key no planned model takes is reported, naming it."""
    from zoo.experiments.reproduce import materialise, run_cells

    opts = Options(sets=[("model.init_args.loss", "bpr"), ("model.init_args.lr", 0.01)], quiet=True, dry_run=True)
    gru, _ = materialise("gru4rec", {}, None, opts)
    assert gru["model"]["init_args"]["loss"] == "bpr" and gru["model"]["init_args"]["lr"] == 0.01
    pop, _ = materialise("pop", {}, None, opts)
    assert "loss" not in pop["model"]["init_args"]
    assert opts.set_uses == {"model.init_args.loss": 1, "model.init_args.lr": 2}
    typo = Options(sets=[("model.init_args.los", "bpr")], quiet=True, dry_run=True)
    materialise("gru4rec", {}, None, typo)
    run_cells([], typo)
    assert "WARNING: --set model.init_args.los: no model of this plan takes 'los'" in capsys.readouterr().err


def test_sigterm_to_reproduce_stops_its_fit_child(tmp_path) -> None:
    """`kill <reproduce pid>` (SIGTERM to the parent alone) must not leave its `zoo fit` child
    training on: the child gets SIGTERM too (Lightning stops at its next step) and the parent exits 143."""
    import signal
    import textwrap

    parent = textwrap.dedent(f"""
        import os, sys, time, types
        from pathlib import Path
        from zoo.experiments import reproduce as R
        d = Path({str(tmp_path)!r})
        child = [sys.executable, "-c",
                 "import os, pathlib, signal, sys, time; d = pathlib.Path(sys.argv[1]); "
                 "signal.signal(signal.SIGTERM, lambda *a: (d.joinpath('term').write_text('1'), sys.exit(0))); "
                 "d.joinpath('pid').write_text(str(os.getpid())); time.sleep(120)", str(d)]
        step = types.SimpleNamespace(run=types.SimpleNamespace(cfg={{}}, run_dir=d / "run"), index=1)
        with open(d / "log", "w") as f:
            R._watch(child, f, dict(os.environ), step, 1, types.SimpleNamespace(log=print), time.time())
    """)
    proc = subprocess.Popen([sys.executable, "-c", parent], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.time() + 60
    while not (tmp_path / "pid").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert (tmp_path / "pid").exists(), "the child never started"
    proc.send_signal(signal.SIGTERM)  # the parent only, as `kill PID` does
    assert proc.wait(timeout=60) == 143
    assert (tmp_path / "term").read_text() == "1"  # the child was told to stop, and did


def test_jobs_runs_fits_side_by_side_each_after_what_it_needs(tmp_path, monkeypatch) -> None:
    """--jobs 2: two fits at a time, a fine-tuning only after its pre-training finished, a shared
    cell after its run; every worker's fits get cores/2 threads and, with 2 GPUs visible, one GPU each."""
    import threading

    import zoo.experiments.reproduce as R

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    monkeypatch.setattr(R.os, "cpu_count", lambda: 8)
    events: list[tuple[str, str, float]] = []
    envs: dict[str, dict] = {}
    live, peak, lock = [0], [0], threading.Lock()

    def fake_fit(step, n, opts):
        name = step.run.run_dir.name
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
            events.append(("start", name, time.time()))
            envs[name] = dict(R._SLOT.env)
        time.sleep(0.3 if name.startswith("p") else 0.1)
        _finished(step.run, {"test/ndcg@10": 0.1})
        with lock:
            live[0] -= 1
            events.append(("end", name, time.time()))
        return {"status": "done", "config_hash": step.run.hash}

    monkeypatch.setattr(R, "fit", fake_fit)
    cfg = {"model": {"class_path": "zoo.models.timirec.TiMiRec"}, "trainer": {"max_epochs": 1}}
    cells = []
    for seed in (0, 1):
        pre = Run({"model": {"class_path": "zoo.models.timirec.TiMiRec"}, "s": seed}, tmp_path / "pretrain" / f"p-s{seed}",
                  seed, "g", "pretrain")
        ft = Run(cfg, tmp_path / "t" / "default" / f"ft-s{seed}", seed, "g", pretrain=pre)
        twin = Run(cfg, tmp_path / "t2" / "default" / f"twin-s{seed}", seed, "g", pretrain=pre)
        base = Run({"model": {"class_path": "zoo.models.sasrec.SASRec"}}, tmp_path / "t" / "default" / f"base-s{seed}",
                   seed, "g")
        cells += [Cell("t", "T", "default", "FT", seed, ft), Cell("t", "T2", "default", "FT", seed, twin),
                  Cell("t", "T", "default", "SASRec", seed, base)]
    opts = Options(out=tmp_path, quiet=True, jobs=2)
    steps = make_plan(cells, opts)
    assert sorted(s.action for s in steps) == ["run"] * 6 + ["share"] * 2
    outcomes = execute_plan(steps, opts)
    assert {outcomes[c.run.run_dir]["status"] for c in cells} == {"done", "reused"}, outcomes  # shared = reused
    t = {(kind, name): at for kind, name, at in events}
    assert len(events) == 12 and peak[0] == 2  # six fits (two pre-trainings), never more than two at once
    for seed in (0, 1):
        assert t[("start", f"ft-s{seed}")] >= t[("end", f"p-s{seed}")]  # after its own pre-training
    assert {e["OMP_NUM_THREADS"] for e in envs.values()} == {"4"}
    assert {e["CUDA_VISIBLE_DEVICES"] for e in envs.values()} == {"3", "5"}
    spans = {name: (t[("start", name)], t[("end", name)]) for name in envs}
    overlapping = [(a, b) for a in spans for b in spans if a < b and spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1]]
    assert overlapping and all(envs[a]["CUDA_VISIBLE_DEVICES"] != envs[b]["CUDA_VISIBLE_DEVICES"] for a, b in overlapping)


def test_sigterm_under_jobs_stops_every_running_fit_and_records_no_failure(tmp_path) -> None:
    """--jobs 2 with two fits running: SIGTERM to the invocation stops both (each gets SIGTERM) and
    leaves their records "running" (they resume), not "failed"."""
    import signal
    import textwrap

    parent = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        from zoo.experiments import reproduce as R
        d = Path({str(tmp_path)!r})
        R.fit_command = lambda run, opts, resume: [
            sys.executable, "-c",
            "import os, pathlib, signal, sys, time; d = pathlib.Path(sys.argv[1]); "
            "signal.signal(signal.SIGTERM, lambda *a: (d.joinpath('term').write_text('1'), sys.exit(0))); "
            "d.joinpath('pid').write_text(str(os.getpid())); time.sleep(120)", str(run.run_dir)]
        cfg = {{"model": {{"class_path": "zoo.models.sasrec.SASRec"}}}}
        cells = [R.Cell("t", "T", "default", "SASRec", s, R.Run(cfg, d / f"SASRec-s{{s}}", s, "g")) for s in (0, 1)]
        opts = R.Options(out=d, quiet=True, jobs=2)
        R.execute_plan(R.make_plan(cells, opts), opts)
    """)
    proc = subprocess.Popen([sys.executable, "-c", parent], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    runs = [tmp_path / f"SASRec-s{s}" for s in (0, 1)]
    deadline = time.time() + 60
    while not all((r / "pid").exists() for r in runs) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert all((r / "pid").exists() for r in runs), "the two fits never ran side by side"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    for r in runs:
        assert (r / "term").read_text() == "1"
        assert json.loads((r / "reproduce.json").read_text())["status"] == "running"


def test_a_row_may_set_a_switch_its_recipe_leaves_at_the_default(tmp_path):
    """An ablation row's argument that the recipe does not spell out but the model class takes (a
    switch added later, e.g. HORAE's gate_backbone) is set; one the class does not take is an error."""
    from zoo.experiments.reproduce import materialise

    opts = Options(out=tmp_path, quiet=True)
    cfg, _ = materialise("horae", {"gate_backbone": "self_attention"}, None, opts)
    assert cfg["model"]["init_args"]["gate_backbone"] == "self_attention"
    with pytest.raises(KeyError, match="takes no such argument"):
        materialise("horae", {"gate_backbone_typo": 1}, None, opts)


def test_plan_gives_a_likely_time_from_the_epochs_finished_runs_took(tmp_path):
    """Besides the max_epochs bound, a fit whose model and data have finished runs under --out gets
    a likely time: the median epochs those runs trained (early stopping) x their seconds per epoch."""
    import zoo.experiments.reproduce as R

    cfg = {"model": {"class_path": "zoo.models.sasrec.SASRec"}, "data": {"init_args": {"max_len": 10}},
           "trainer": {"max_epochs": 200}}
    for seed, (epochs, wall) in enumerate([(20, 10 + 200.0), (30, 10 + 300.0), (40, 10 + 400.0)]):
        d = tmp_path / "p" / "default" / f"SASRec-s{seed}"
        d.mkdir(parents=True)
        (d / "reproduce.json").write_text(json.dumps({"status": "done", "wall_time_s": wall, "config_hash": "h"}))
        (d / "test_metrics.json").write_text(json.dumps({"config": cfg, "epochs": epochs}))
    measured = R.measured_timings([tmp_path])
    (timing,) = measured.values()
    assert timing.sec_per_epoch == pytest.approx(10.0) and timing.epochs == [20, 30, 40]
    upper, basis, likely = R.estimate(Run(cfg, tmp_path / "x-s3", 3, "h"), measured)
    assert upper == pytest.approx(R.STARTUP_S + 200 * 10.0) and likely == pytest.approx(R.STARTUP_S + 30 * 10.0)
    assert "median 30 epochs of 3 finished run(s)" in basis
    other = {**cfg, "model": {"class_path": "zoo.models.gru4rec.GRU4Rec"}}  # no finished run: no likely time
    assert R.estimate(Run(other, tmp_path / "y-s0", 0, "h"), measured)[2] is None
    step = R.Step(Run(cfg, tmp_path / "x-s3", 3, "h"), "run", "p/default/SASRec seed 3", estimate_s=upper,
                  basis=basis, likely_s=likely, index=1)
    text = R.plan_text([step], Options(out=tmp_path, quiet=True))
    assert "likely about 5.2 min" in text and "(1 of 1 runs" in text


def test_the_estimate_prefers_other_seeds_of_the_same_config_and_times_a_resumed_leg_only(tmp_path):
    """Runs of the same model under other settings (a --set variant twice as fast) do not set the
    estimate when another seed of the same config has finished; a run resumed after N epochs is
    timed over the epochs its last leg trained (its wall time covers that leg only)."""
    import yaml

    import zoo.experiments.reproduce as R

    cfg = {"model": {"class_path": "zoo.models.sasrec.SASRec", "init_args": {"hidden": 64}},
           "data": {"init_args": {"max_len": 10}}, "trainer": {"max_epochs": 100}}
    fast = {**cfg, "model": {"class_path": "zoo.models.sasrec.SASRec", "init_args": {"hidden": 32}}}
    runs = [("fast-s0", fast, 10, 10 + 100.0, {}),  # 10 s/epoch
            ("same-s0", cfg, 12, 10 + 4 * 30.0, {"epochs_before": 8})]  # resumed at 8: 4 epochs in 120 s
    for name, c, epochs, wall, extra in runs:
        d = tmp_path / "p" / "default" / name
        d.mkdir(parents=True)
        (d / "reproduce.json").write_text(json.dumps({"status": "done", "wall_time_s": wall, "config_hash": "h", **extra}))
        (d / "test_metrics.json").write_text(json.dumps({"config": c, "epochs": epochs}))
        (d / "recipe.yaml").write_text("# materialised\n" + yaml.safe_dump(c, sort_keys=False))
    measured = R.measured_timings([tmp_path])
    upper, basis, likely = R.estimate(Run(cfg, tmp_path / "x-s1", 1, "h"), measured)
    assert upper == pytest.approx(R.STARTUP_S + 100 * 30.0) and likely == pytest.approx(R.STARTUP_S + 12 * 30.0)
    assert basis == "100 epochs, measured here; likely 6.2 min: median 12 epochs of 1 finished run(s) here"
    upper, basis, _ = R.estimate(Run(fast, tmp_path / "y-s1", 1, "h"), measured)
    assert upper == pytest.approx(R.STARTUP_S + 100 * 10.0) and basis.startswith("100 epochs, measured here;")
    other = {**cfg, "model": {"class_path": "zoo.models.sasrec.SASRec", "init_args": {"hidden": 16}}}
    upper, basis, _ = R.estimate(Run(other, tmp_path / "z-s0", 0, "h"), measured)  # no seed of its own: both runs
    assert upper == pytest.approx(R.STARTUP_S + 100 * 20.0) and "measured here on other settings" in basis


def test_a_resumed_fit_is_estimated_for_the_epochs_it_has_left(tmp_path):
    """An interrupted run's CSV logs say how many epochs it finished (validation rows, across the
    versions a resume starts); the plan's bound and likely time count only what is left."""
    import zoo.experiments.reproduce as R

    run_dir = tmp_path / "x-s0"
    for version, epochs in ((0, range(0, 6)), (1, range(6, 10))):  # resumed once, after epoch 5
        log = run_dir / "logs" / f"version_{version}" / "metrics.csv"
        log.parent.mkdir(parents=True)
        rows = ["epoch,step,train/loss,val/recall@10"]
        for e in epochs:
            rows += [f"{e},{e * 10 + 5},1.0,", f"{e},{e * 10 + 9},,0.1"]
        rows.append("10,105,1.0,")  # epoch 10 had started: no validation row yet
        log.write_text("\n".join(rows) + "\n")
    assert R._epochs_done(run_dir) == 10 and R._epochs_done(tmp_path / "none") == 0
    cfg = {"model": {"class_path": "zoo.models.sasrec.SASRec"}, "data": {"init_args": {}}, "trainer": {"max_epochs": 20}}
    measured = {R._timing_key(cfg): R.Timing(sec_per_epoch=60.0, epochs=[14, 16])}
    upper, basis, likely = R.estimate(Run(cfg, run_dir, 0, "h"), measured, done=10)
    assert upper == pytest.approx(R.STARTUP_S + 10 * 60.0) and likely == pytest.approx(R.STARTUP_S + 5 * 60.0)
    assert basis.startswith("10 of 20 epochs left")
    assert R.estimate(Run(cfg, run_dir, 0, "h"), measured, done=25)[0] == pytest.approx(R.STARTUP_S + 60.0)


def test_a_resumed_fit_past_the_median_is_not_called_nearly_done(tmp_path):
    """A resumed run that improved recently must wait out its early-stopping patience: the likely
    time is at least those epochs, not one epoch because it has passed the median of finished runs
    (TiSASRec resumed at epoch 33 with its best at 28 and patience 10 was planned as 'likely 6 min')."""
    import zoo.experiments.reproduce as R

    run_dir = tmp_path / "x-s0"
    log = run_dir / "logs" / "version_0" / "metrics.csv"
    log.parent.mkdir(parents=True)
    values = [0.10, 0.12, 0.11, 0.15, 0.14, 0.15, 0.13]  # best at epoch 3 (a tie at 5 is no improvement)
    log.write_text("epoch,step,train/loss,val/ndcg@20\n" + "".join(f"{e},{e},,{v}\n" for e, v in enumerate(values)))
    cfg = {"model": {"class_path": "zoo.models.sasrec.SASRec"}, "data": {"init_args": {}}, "trainer": {"max_epochs": 20},
           "monitor": "val/ndcg@20", "monitor_mode": "max", "patience": 10}
    assert R._patience_left(run_dir, cfg) == 10 - (6 - 3)
    assert R._patience_left(run_dir, {**cfg, "patience": 0}) == 0 and R._patience_left(tmp_path / "none", cfg) == 0
    assert R._patience_left(run_dir, {**cfg, "monitor_mode": "min"}) == 10 - 6  # lowest value: epoch 0
    measured = {R._timing_key(cfg): R.Timing(sec_per_epoch=60.0, epochs=[5, 6])}
    _, basis, likely = R.estimate(Run(cfg, run_dir, 0, "h"), measured, done=7, min_left=R._patience_left(run_dir, cfg))
    assert likely == pytest.approx(R.STARTUP_S + 7 * 60.0) and "early stopping waits 7 more epoch(s)" in basis
    _, _, likely = R.estimate(Run(cfg, run_dir, 0, "h"), measured, done=7)  # without the floor: one epoch
    assert likely == pytest.approx(R.STARTUP_S + 60.0)


@pytest.mark.parametrize("rc, restarted", [(143, False), (-9, False), (1, True)], ids=["sigterm", "sigkill", "error"])
def test_a_resume_ended_by_a_signal_is_not_restarted_from_scratch(tmp_path, monkeypatch, rc, restarted):
    """A resumed fit that fails to start (its checkpoint cut off by an earlier kill) starts again from
    scratch; one ended by a signal (a scheduler's SIGTERM: zoo fit exits 143 with last.ckpt at the step
    it reached; SIGKILL) keeps its folder for the next resume."""
    import types

    import zoo.experiments.reproduce as R

    resumes: list[bool] = []

    def fake_fit_command(run, opts, resume):
        resumes.append(resume)
        code = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)" if rc == -9 else f"raise SystemExit({rc})"
        return [sys.executable, "-c", code]

    monkeypatch.setattr(R, "fit_command", fake_fit_command)
    run = R.Run({"model": {"class_path": "zoo.models.sasrec.SASRec"}}, tmp_path / "SASRec-s0", 0, "g")
    step = types.SimpleNamespace(run=run, action="resume", source=None, index=1, label="SASRec seed 0", estimate_s=1.0)
    meta = R.fit(step, 1, R.Options(out=tmp_path, quiet=True))
    assert resumes == ([True, False] if restarted else [True])
    assert meta["status"] == "failed" and meta["returncode"] == rc
