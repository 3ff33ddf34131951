"""Reproduce a paper's main table: every (model, dataset) cell through the real ``zoo fit``, N seeds.

    zoo reproduce --paper horae --seeds 2                      # embedded default, fresh clone
    zoo reproduce --paper all --data-root ~/data --seeds 5     # the papers' datasets
    zoo reproduce --paper timirec --datasets Beauty --models TiMiRec ComiRec-SA --seeds 5 --data-root ~/data

What one cell is (``zoo/experiments/paper_numbers.yaml`` says it per paper):

* the model's recipe (the dataset's own per-dataset recipe when it has one, e.g.
  ``horae_office.yaml`` of ``--recipes``; otherwise the model's generic recipe with the ``data`` block,
  ``monitor`` and ``topk`` of the dataset's ``data_from`` recipe, so every column of a table shares
  data, split and metrics), materialised to ``<run_dir>/recipe.yaml`` and run as
  ``zoo fit --config <run_dir>/recipe.yaml --seed_everything S --run_dir <run_dir>`` in its own
  process;
* pre-training first when the recipe's ``model.init_args.pretrained_ckpt`` is
  ``runs/<recipe>/best.ckpt`` or ``last.ckpt`` of a recipe in ``--recipes``: that recipe runs (same
  seed, same overrides) into ``<out>/pretrain/<recipe>-<hash>-s<seed>/`` and the same checkpoint
  of it (MIRACLE/HORAE: ``last.ckpt``, the official codes' final epoch; TiMiRec: ``best.ckpt``) is passed as
  ``model.init_args.pretrained_ckpt``; identical pre-training runs are shared between cells.

The plan is made once, before anything runs, and is exactly what executes: every ``zoo fit`` in
order (pre-training before the cells that load it, each run once), with an estimated cost, plus the
cells that are reused (finished), shared (the same config and seed already ran for another table)
or skipped (missing raw data).  ``--dry-run`` prints it and stops; a real run prints it and then
executes it, one line when each fit starts and ends and at most one line per epoch in between.

Resume: a run whose ``test_metrics.json`` exists is not run again (a run killed half-way restarts
from its ``last.ckpt``).  A run whose stored config hash differs from the current one, or which ran
with a code default that has changed since (its saved ``config.yaml`` against the class's
defaults today), is reported as stale and kept unless ``--force``; such a run is neither shared
with another table nor resumed.  A cell whose raw files are missing under ``--data-root`` is
reported as skipped with the expected paths.  ``--archive DIR`` keeps finished cells' records (and
restores them on another machine); ``--archive-unfinished`` also keeps unfinished cells' checkpoints
there, which the next plan resumes wherever it runs (docs/reproduction.md, "Keeping a table's runs").

Outputs under ``--out`` (default ``runs/reproduce``, outside version control; the committed tables
in ``benchmarks/results`` are written only when that folder is given as ``--out``), per paper: ``<paper>/results.csv`` and
``results.json`` (one row per run: every test metric, seed, config hash, checkpoint, wall time) and
``<paper>/table.md`` (ours: mean over test users, seeds averaged, with a 95% bootstrap CI over users
and the std over seeds, beside the paper's number and the relative difference; then every row's
paired sign-flip test over users against our best baseline, Holm-corrected across the dataset's
table: the statistics of ``zoo compare``, :mod:`zoo.experiments.compare`).  Runs log to W&B offline by default (``--wandb off`` disables it), all runs of a
(paper, dataset) in one group, plus one summary run holding the results table.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import functools
import hashlib
import io
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import yaml

from zoo.provenance import emulated_bf16_note
from zoo.runfiles import CLAIM_NAME, LOCK_NAME, atomic_write  # noqa: F401  (atomic_write: also imported from here by older callers)

PACKAGE = Path(__file__).resolve().parents[1]  # zoo/
NUMBERS = Path(__file__).with_name("paper_numbers.yaml")
PAPERS = ("horae", "miracle", "timirec", "hpcl4sr", "hm4sr")
DEFAULT_OUT = Path("runs") / "reproduce"  # relative to the working directory; git-ignored
DEFAULT_ABLATE_OUT = Path("runs") / "ablate"
# the real `zoo` console entry point, run with this interpreter (each run in its own process)
ENTRY = "import sys; from zoo.entry import main; sys.exit(main())"
PATH_KEYS = {"image_features", "text_features", "images_dir"}


# ----------------------------------------------------------------------------- files
def load_numbers(path: Path = NUMBERS) -> dict[str, Any]:
    numbers = copy.deepcopy(_read_yaml(str(path), Path(path).stat().st_mtime_ns))
    for p in PAPERS:
        if p not in numbers or "main" not in numbers[p]:
            raise KeyError(f"{path}: paper '{p}' or its 'main' table is missing")
    return numbers


def default_recipes() -> Path:
    """The recipes folder: ``zoo/recipes`` inside an installed wheel (package data), else the
    checkout's top-level ``recipes/`` (source checkout or editable install)."""
    for folder in (PACKAGE / "recipes", PACKAGE.parent / "recipes"):
        if any(folder.glob("*.yaml")):
            return folder
    raise FileNotFoundError(f"no recipes found in {PACKAGE / 'recipes'} or {PACKAGE.parent / 'recipes'}; "
                            "give the folder with --recipes DIR")


@functools.lru_cache(maxsize=256)
def _read_yaml(path: str, mtime_ns: int) -> Any:
    """A YAML file, parsed once per version (a plan reads each recipe for many cells)."""
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # safe loaders only


def load_recipe(name: str, recipes: Path | None = None) -> dict[str, Any]:
    path = (recipes or default_recipes()) / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"recipe {path} does not exist (named in {NUMBERS.name})")
    cfg = copy.deepcopy(_read_yaml(str(path), path.stat().st_mtime_ns))
    if not isinstance(cfg, dict) or "model" not in cfg or "data" not in cfg:
        raise ValueError(f"{path}: expected a recipe with 'model' and 'data' sections")
    return cfg


def config_hash(cfg: dict[str, Any], seed: int) -> str:
    blob = json.dumps({"cfg": cfg, "seed": seed}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def slug(name: str) -> str:
    """A folder/W&B-safe name: 'w/o L_intra' -> 'wo_L_intra', 'TiMiRec+' -> 'TiMiRec+'."""
    s = name.replace("w/o", "wo").replace("'+'", "plus").replace("'*'", "mul")
    return re.sub(r"[^A-Za-z0-9+.-]+", "_", s).strip("_") or "run"


# ----------------------------------------------------------------------------- options
@dataclass
class Options:
    """What every run of one invocation shares (CLI flags)."""

    out: Path = DEFAULT_OUT
    recipes: Path = field(default_factory=default_recipes)  # --recipes DIR
    data_root: Path | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    max_epochs: int | None = None
    limit_train_batches: float | None = None
    sets: list[tuple[str, Any]] = field(default_factory=list)  # --set KEY=VALUE (dotted recipe keys)
    wandb: str = "offline"
    force: bool = False
    dry_run: bool = False
    quiet: bool = False
    command: str = "zoo reproduce"
    share: list[Path] = field(default_factory=list)  # more folders whose finished runs are shared
    set_uses: dict[str, int] = field(default_factory=dict)  # --set model key -> runs it was applied to
    jobs: int = 1  # --jobs N: fits at once (execute_plan)
    archive: Path | None = None  # --archive DIR: finished cells' records kept (and restored) there
    archive_unfinished: bool = False  # --archive-unfinished: also unfinished cells' checkpoints (resumed from there)
    last_every_n_steps: int = 0  # --last-every-n-steps N: each fit refreshes last.ckpt every N steps

    def log(self, msg: str) -> None:
        if not self.quiet:
            print(f"[{self.command.split()[1] if ' ' in self.command else 'reproduce'}] {msg}", flush=True)


def parse_set(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ValueError(f"--set expects KEY=VALUE (a dotted recipe key), got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def set_dotted(cfg: dict[str, Any], key: str, value: Any) -> None:
    node = cfg
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ValueError(f"--set {key}: '{p}' is not a section of the recipe")
    node[parts[-1]] = value


# ----------------------------------------------------------------------------- config assembly
def _spec(entry: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(entry, str):
        return entry, {}
    return entry["recipe"], dict(entry.get("args") or {})


def _data_paths(node: Any, in_paths: bool = False) -> Iterable[tuple[Any, Any]]:
    """(container, key) of every raw-file path inside a ``data.init_args`` block."""
    if isinstance(node, dict):
        for k, v in node.items():
            if isinstance(v, str) and (in_paths or k in PATH_KEYS):
                yield node, k
            elif isinstance(v, (dict, list)):
                yield from _data_paths(v, in_paths or k == "paths")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            if isinstance(v, str) and in_paths:
                yield node, i
            elif isinstance(v, (dict, list)):
                yield from _data_paths(v, in_paths)


def resolve_path(raw: str, data_root: Path | None) -> Path:
    """``data/amazon2018/X.csv`` or ``~/data/amazon2018/X.csv`` -> ``<data_root>/amazon2018/X.csv``.

    Paths without a ``data`` folder (e.g. ``~/.cache/zoo/raw/ml-100k``) and every path when no data
    root is given stay as the recipe says (``~`` expanded, relative to the working directory).
    """
    p = Path(raw).expanduser()
    parts = Path(raw).parts
    if data_root is not None and "data" in parts:
        rest = parts[parts.index("data") + 1:]
        return (Path(data_root).expanduser() / Path(*rest)).absolute() if rest else Path(data_root).absolute()
    return p.absolute()


@functools.lru_cache(maxsize=None)
def init_arguments(class_path: str) -> frozenset[str] | None:
    """Every keyword argument a model class takes, its bases' through ``**kwargs`` included; None
    when it does not import."""
    from zoo.experiments.compare import class_arguments

    found = class_arguments(class_path)
    return None if found is None else frozenset(found)


def finetune_only_arguments(class_path: str) -> frozenset[str]:
    """The arguments a two-stage model's pre-training never reads (its ``FINETUNE_ONLY``; none when
    the class does not say, or does not import)."""
    from zoo.experiments.compare import import_class

    return frozenset(getattr(import_class(class_path), "FINETUNE_ONLY", ()))


def materialise(recipe: str, args: dict[str, Any], data_cfg: dict[str, Any] | None, opts: Options,
                strict_args: bool = True) -> tuple[dict[str, Any], list[str]]:
    """A recipe with ``args`` on ``model.init_args``, optionally another ``data`` block, the run
    options, absolute data paths and ``model.max_len == data.max_len``.  Returns (cfg, missing files)."""
    cfg = load_recipe(recipe, opts.recipes)
    if data_cfg is not None:
        cfg["data"] = copy.deepcopy(data_cfg["data"])
        for k in ("monitor", "monitor_mode"):
            if k in data_cfg:
                cfg[k] = data_cfg[k]
        src_topk = data_cfg["model"].get("init_args", {}).get("topk")
        if src_topk is not None and "topk" in cfg["model"].get("init_args", {}):
            cfg["model"]["init_args"]["topk"] = src_topk
    init = cfg["model"].setdefault("init_args", {})
    accepted = init_arguments(str(cfg["model"].get("class_path", ""))) if args else None
    for k, v in args.items():
        if k in init or (accepted is not None and k in accepted):  # a switch the recipe leaves at its default
            init[k] = v
        elif strict_args:
            raise KeyError(f"{opts.recipes / recipe}.yaml: model.init_args has no '{k}' and its class takes no such "
                           f"argument (asked for by {NUMBERS.name})")
    for key, value in opts.sets:
        if key.startswith("model.init_args."):
            name = key.split(".", 2)[2]
            accepted = init_arguments(str(cfg["model"].get("class_path", "")))
            if name not in init and (accepted is None or name not in accepted):
                opts.set_uses.setdefault(key, 0)
                continue  # a model without this argument (e.g. Pop has no `d`)
            opts.set_uses[key] = opts.set_uses.get(key, 0) + 1
        set_dotted(cfg, key, value)
    trainer = cfg.setdefault("trainer", {})
    if opts.max_epochs is not None and (trainer.get("max_epochs") or 0) > 0:
        trainer["max_epochs"] = min(int(trainer["max_epochs"]), opts.max_epochs)
    if opts.limit_train_batches is not None:
        trainer["limit_train_batches"] = opts.limit_train_batches
    dinit = cfg["data"].setdefault("init_args", {})
    missing = []
    for container, key in list(_data_paths(dinit)):
        p = resolve_path(container[key], opts.data_root)
        container[key] = str(p)
        if not p.exists():
            missing.append(str(p))
    if "max_len" in init and "max_len" in dinit:
        init["max_len"] = dinit["max_len"]
    return cfg, missing


PRETRAIN_CKPT = re.compile(r"^runs/([A-Za-z0-9_.-]+)/(best|last)\.ckpt$")


@dataclass
class Run:
    """One ``zoo fit`` (a cell's seed, or a pre-training it needs)."""

    cfg: dict[str, Any]
    run_dir: Path
    seed: int
    group: str
    job_type: str = "fit"
    missing: list[str] = field(default_factory=list)
    pretrain: "Run | None" = None

    @property
    def hash(self) -> str:
        return config_hash(self.cfg, self.seed)

    @property
    def done(self) -> bool:
        return (self.run_dir / "test_metrics.json").is_file()


def plan_run(recipe: str, args: dict[str, Any], data_cfg: dict[str, Any] | None, run_dir: Path, seed: int,
             group: str, opts: Options, pretrain_data: str | None = None) -> Run:
    """Materialise a run and, where its recipe pre-trains, the pre-training run it depends on."""
    cfg, missing = materialise(recipe, args, data_cfg, opts)
    run = Run(cfg, run_dir, seed, group, missing=missing)
    ckpt = cfg["model"].get("init_args", {}).get("pretrained_ckpt")
    m = PRETRAIN_CKPT.match(str(ckpt)) if ckpt else None
    if m and (opts.recipes / f"{m.group(1)}.yaml").is_file():
        pre_data = {"data": cfg["data"], "model": {"init_args": {}}} if pretrain_data == "cell" else None
        # a row's stage-2-only switches (the model's FINETUNE_ONLY) leave its pre-training as the recipe's:
        # rows that differ only there share one stage-1 run
        stage2 = finetune_only_arguments(str(load_recipe(m.group(1), opts.recipes)["model"].get("class_path", "")))
        pcfg, pmissing = materialise(m.group(1), {k: v for k, v in args.items() if k not in stage2}, pre_data, opts,
                                     strict_args=False)
        pre_dir = opts.out / "pretrain" / f"{m.group(1)}-{config_hash(pcfg, 0)[:8]}-s{seed}"
        run.pretrain = Run(pcfg, pre_dir, seed, group, job_type="pretrain", missing=pmissing)
        cfg["model"]["init_args"]["pretrained_ckpt"] = str(pre_dir / f"{m.group(2)}.ckpt")  # the recipe's choice
        run.missing = sorted(set(missing) | set(pmissing))
    elif ckpt and not Path(str(ckpt)).expanduser().exists():
        run.missing.append(str(Path(str(ckpt)).expanduser().absolute()))
    return run


# ----------------------------------------------------------------------------- the plan
# Seconds per training epoch (validation included) of each model on its embedded-default recipe on
# a shared 2-core CPU, from the time-capped runs stored in benchmarks/results/*/results.json
# (wall time / epochs reached).  Only for estimates; finished runs under --out refine them.  TiSASRec
# has no stored run yet: SASRec's figure times the ~3x of one of its training steps measured beside
# SASRec's (256 windows of 50, d = 64; its [B, L, L, d] interval terms) on the same CPU.
SECONDS_PER_EPOCH = {"Pop": 0.0, "GRU4Rec": 27.0, "SASRec": 32.0, "MIND": 6.0, "ComiRec": 9.0, "MIRACLE": 143.0,
                     "HORAE": 215.0, "TiMiRec": 14.0, "HPCL4SR": 17.0, "HM4SR": 185.0, "TiSASRec": 90.0}
STARTUP_S = 10.0  # one `zoo fit` process: imports, data cache, test after fit


@dataclass
class Cell:
    """One (table, dataset, row, seed) of a results table: the run that fills it, or why none does."""

    paper: str
    table: str
    dataset: str
    row: str
    seed: int
    run: Run | None
    reason: str = ""  # why there is no run (no zoo recipe for this dataset)

    @property
    def label(self) -> str:
        return f"{self.paper} {self.table}/{self.dataset}/{self.row} seed {self.seed}"


@dataclass
class Step:
    """One line of the plan.  ``action``: run | resume (a ``zoo fit`` executes) | reuse (finished
    here before) | restore (finished before, kept in ``--archive`` at ``source``) | share (the same
    config and seed finished, or will finish, at ``source``) | skip."""

    run: Run | None
    action: str
    label: str
    reason: str = ""
    source: Path | None = None
    estimate_s: float | None = None
    basis: str = ""
    likely_s: float | None = None  # from the finished runs of the same model and data, when there are some
    stale: bool = False
    index: int = 0  # 1..n over the steps that execute a `zoo fit`

    @property
    def fits(self) -> bool:
        return self.action in ("run", "resume")


def _max_time_s(value: Any) -> float | None:
    """Lightning's ``trainer.max_time`` ("DD:HH:MM:SS" or a {days, hours, minutes, seconds} dict) in seconds."""
    if isinstance(value, str) and re.fullmatch(r"\d+:\d{1,2}:\d{1,2}:\d{1,2}", value):
        d, h, m, s = (int(x) for x in value.split(":"))
        return ((d * 24 + h) * 60 + m) * 60 + s
    if isinstance(value, dict):
        return sum(float(value.get(k, 0)) * f for k, f in (("days", 86400), ("hours", 3600), ("minutes", 60),
                                                             ("seconds", 1)))
    return None


def _model_class(cfg: dict[str, Any]) -> str:
    return str(cfg.get("model", {}).get("class_path", "?")).rsplit(".", 1)[-1]


# the data arguments that decide what an epoch costs; the rest (cache folder, workers, ...) do not
TIMING_DATA_ARGS = ("format", "paths", "name", "format_options", "pretrain_domains", "protocol", "k_core",
                    "max_len", "batch_size", "eval_negatives")


def _timing_key(cfg: dict[str, Any]) -> str:
    """Model class + the data arguments an epoch's cost depends on + batch limit.  A recipe gives
    some data arguments and leaves the rest to the class, while a finished run's saved config holds
    every one: both are completed with the datamodule's defaults, so the two meet."""
    from zoo.experiments.compare import class_arguments

    trainer = cfg.get("trainer") or {}
    data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    given = data.get("init_args") or {}
    defaults = class_arguments(str(data.get("class_path"))) or {}
    args = {k: given[k] if k in given else defaults.get(k) for k in TIMING_DATA_ARGS}
    return config_hash({"model": _model_class(cfg), "data": [data.get("class_path"), args],
                        "limit": trainer.get("limit_train_batches")}, 0)


def _exact_timing_key(cfg: dict[str, Any]) -> str:
    """The run's whole config without its seed (a pre-training checkpoint path without its ``--out``
    root, :func:`share_key`): the other seeds of the same config, which :func:`estimate` prefers to
    runs of the same model under other settings (``--set`` variants, ablation rows)."""
    return "config:" + share_key(cfg, 0)


def _read_recipe(path: Path) -> dict[str, Any] | None:
    """A run folder's materialised ``recipe.yaml`` (the config it ran), or None when absent or unreadable."""
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    return cfg if isinstance(cfg, dict) else None


@dataclass
class Timing:
    """What the finished runs of one model class on one dataset (and batch limit) took here."""

    sec_per_epoch: float  # median over the runs
    epochs: list[int]  # epochs each run trained before early stopping (or its max_epochs) ended it


def measured_timings(roots: Iterable[Path]) -> dict[str, Timing]:
    """The finished runs under ``roots``, keyed by model class + data + batch limit (:func:`_timing_key`)."""
    per_epoch: dict[str, list[float]] = {}
    epochs: dict[str, list[int]] = {}
    for root in roots:
        for meta_path in root.glob("**/reproduce.json"):
            try:
                meta = json.loads(meta_path.read_text())
                tm = json.loads((meta_path.parent / "test_metrics.json").read_text())
            except (OSError, ValueError):
                continue
            copy = "twin_of" in meta or "restored_from" in meta  # its original is counted where it ran
            if meta.get("status") != "done" or copy or not meta.get("wall_time_s") or not tm.get("config"):
                continue
            n = max(int(tm.get("epochs") or 0), 1)  # Lightning's current_epoch after fit = epochs run
            trained = max(n - int(meta.get("epochs_before") or 0), 1)  # a resumed fit's wall covers its last leg
            keys = [_timing_key(tm["config"])]
            recipe = _read_recipe(meta_path.parent / "recipe.yaml")
            if recipe is not None:
                keys.append(_exact_timing_key(recipe))
            for key in keys:
                per_epoch.setdefault(key, []).append(max(0.0, float(meta["wall_time_s"]) - STARTUP_S) / trained)
                epochs.setdefault(key, []).append(n)
    return {k: Timing(statistics.median(v), sorted(epochs[k])) for k, v in per_epoch.items()}


def estimate(run: Run, measured: dict[str, Timing], done: int = 0,
             min_left: int = 0) -> tuple[float | None, str, float | None]:
    """An upper estimate of one fit's wall time: ``max_epochs`` (capped by ``max_time``) × seconds per
    epoch, from the finished runs of the same config (other seeds) under ``--out`` or ``--archive``,
    else of the same model and data under other settings, when there are some,
    else from the embedded-default timing table (``SECONDS_PER_EPOCH``); and a likely time, the
    median number of epochs those finished runs trained (early stopping included) × seconds per
    epoch, or None without such runs.  ``done``: epochs a resumed run has already trained, taken
    off both (at least one epoch stays); ``min_left``: epochs its early stopping still has to wait
    (:func:`_patience_left`), a floor under the likely time (a resumed run past the median epochs is
    not nearly done).  Returns ``(upper s, basis, likely s)``."""
    cls = _model_class(run.cfg)
    trainer = run.cfg.get("trainer") or {}
    epochs = trainer.get("max_epochs")
    if epochs is not None and not isinstance(epochs, int):
        return None, f"max_epochs {epochs!r} is not a number", None
    epochs = 1000 if epochs in (None, -1) else epochs
    left = max(epochs - done, 1)  # a resumed run trains what is left of its budget
    timing = measured.get(_exact_timing_key(run.cfg))
    basis, likely = "measured here", None
    if timing is None:  # no other seed of this config: runs of the same model and data under other settings
        timing = measured.get(_timing_key(run.cfg))
        basis = "measured here on other settings of this model"
    if timing is not None:
        spe = timing.sec_per_epoch
        typical = min(statistics.median(timing.epochs), epochs)
        likely = STARTUP_S + max(typical - done, min(min_left, left), 1) * spe
        basis += f"; likely {fmt_s(likely)}: median {typical:g} epochs of {len(timing.epochs)} finished run(s) here"
        if min_left > typical - done:
            basis += f", and early stopping waits {min_left} more epoch(s) at least"
    else:
        spe = next((v for k, v in SECONDS_PER_EPOCH.items() if cls.startswith(k)), None)
        basis = "embedded-default timing"
        if spe is None:
            return None, f"no timing for {cls}", None
        limit = trainer.get("limit_train_batches")
        if isinstance(limit, float) and 0 < limit < 1:
            spe *= limit
        elif isinstance(limit, int) and limit > 0:
            spe = min(spe, 0.5 * limit + 2.0)  # ~0.5 s per CPU batch + validation
    train = left * spe
    cap = _max_time_s(trainer.get("max_time"))
    if cap is not None and cap < train:
        train, basis = cap, basis + ", max_time"
        likely = None if likely is None else min(likely, STARTUP_S + cap)
    budget = f"{epochs} epochs" if not done else f"{left} of {epochs} epochs left"
    return STARTUP_S + train, f"{budget}, {basis}", likely


def _validation_log(run_dir: Path) -> dict[int, dict[str, float]]:
    """An interrupted or finished run's validation values per epoch, from its CSV logs
    (``logs/version_*/metrics.csv``; a resumed fit starts a new version): ``{epoch: {metric: value}}``,
    only epochs with a validation row; unreadable logs are skipped."""
    log: dict[int, dict[str, float]] = {}
    for path in run_dir.glob("logs/version_*/metrics.csv"):
        try:
            with path.open(newline="", encoding="utf-8") as f:
                for row in csv.DictReader(f):
                    vals = {k: float(v) for k, v in row.items() if k and k.startswith("val/") and v}
                    if row.get("epoch", "").isdigit() and vals:
                        log.setdefault(int(row["epoch"]), {}).update(vals)
        except (OSError, csv.Error, UnicodeDecodeError, ValueError):
            continue
    return log


def _epochs_done(run_dir: Path) -> int:
    """Epochs an interrupted run has finished: one past the last epoch with a validation row in its
    CSV logs; 0 when unknown."""
    return max(_validation_log(run_dir), default=-1) + 1


def _patience_left(run_dir: Path, cfg: dict[str, Any]) -> int:
    """Epochs an interrupted run must still train before its early stopping can end it: ``patience``
    minus the validation rounds since its best ``monitor`` value (from its CSV logs); 0 without
    early stopping or logs."""
    patience, monitor = int(cfg.get("patience") or 0), cfg.get("monitor")
    if patience <= 0 or not monitor:
        return 0
    sign = -1.0 if cfg.get("monitor_mode", "max") == "min" else 1.0
    values = {e: sign * row[monitor] for e, row in _validation_log(run_dir).items() if monitor in row}
    if not values:
        return 0
    best = max(values.values())
    best_epoch = min(e for e, v in values.items() if v == best)  # EarlyStopping needs a strict improvement
    return max(0, patience - (max(values) - best_epoch))


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def twin_index(roots: Iterable[Path]) -> dict[tuple[str, int], Path]:
    """{(config hash, seed): folder} of the finished runs under ``roots`` that may be shared: main
    cells ``<paper>/<dataset>/<row>``, ablation cells ``<paper>/ablation/<table>/<dataset>/<row>``
    (the same baseline appears in several papers' tables on the embedded default, and an ablation
    table's full-model row is often a main-table cell).  Pre-training runs are never shared (a
    fine-tuning loads their checkpoint, which a shared copy does not have), nor are copies."""
    index: dict[tuple[str, int], Path] = {}
    layouts = ("*/*/*/reproduce.json", "*/ablation/*/*/*/reproduce.json")
    for root in roots:
        for meta_path in [m for pattern in layouts for m in sorted(Path(root).glob(pattern))]:
            d = meta_path.parent
            if d.parent.name == "pretrain" or not (d / "test_metrics.json").is_file():
                continue
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, ValueError):
                continue
            if meta.get("status") == "done" and "twin_of" not in meta and "config_hash" in meta:
                index.setdefault((_stored_share_key(d, meta), meta.get("seed")), d)
    return index


PRETRAIN_DIR_CKPT = re.compile(r"(?:^|[/\\])pretrain[/\\]([^/\\]+-[0-9a-f]{8}-s\d+)[/\\](best|last)\.ckpt$")


def share_key(cfg: dict[str, Any], seed: int) -> str:
    """The config hash with a planned pre-training checkpoint written without its ``--out`` root
    (``pretrain/<recipe>-<hash>-s<seed>/last.ckpt``: the folder name already holds the pre-training's
    config hash and seed), so that ``zoo ablate`` (``runs/ablate``) finds a two-stage model's cell
    finished by ``zoo reproduce`` (``runs/reproduce``) and the other way round.  Equal to
    :func:`config_hash` for every other config."""
    ckpt = ((cfg.get("model") or {}).get("init_args") or {}).get("pretrained_ckpt")
    m = PRETRAIN_DIR_CKPT.search(str(ckpt)) if ckpt else None
    if m is None:
        return config_hash(cfg, seed)
    cfg = copy.deepcopy(cfg)
    cfg["model"]["init_args"]["pretrained_ckpt"] = f"pretrain/{m.group(1)}/{m.group(2)}.ckpt"
    return config_hash(cfg, seed)


def _stored_share_key(run_dir: Path, meta: dict[str, Any]) -> str:
    """:func:`share_key` of a finished run, from the config it ran (its ``recipe.yaml``), when that
    is the config its stored hash names; else the stored hash."""
    cfg = _read_recipe(run_dir / "recipe.yaml")
    if cfg is None or config_hash(cfg, meta.get("seed")) != meta["config_hash"]:
        return meta["config_hash"]
    return share_key(cfg, meta.get("seed"))


def find_twin(run: Run, roots: Iterable[Path], index: dict[tuple[str, int], Path] | None = None) -> Path | None:
    """A finished run elsewhere under ``roots`` with this run's config and seed (see :func:`twin_index`)."""
    twin = (index if index is not None else twin_index(roots)).get((share_key(run.cfg, run.seed), run.seed))
    return None if twin == run.run_dir else twin


def changed_defaults(run_dir: Path, cfg: dict[str, Any]) -> list[str]:
    """What a run in ``run_dir`` ran with that this config would not run with today: for every
    ``model``/``data`` argument its saved ``config.yaml`` (Lightning's record of every argument,
    defaults included) holds and this config leaves to the class, the class's current default, when
    the two differ, as ``"model.init_args.K: ran V, now W"``.  The config hash covers the recipe only,
    so this is how a run made before a code default changed (a fix, an audit) is found stale instead
    of being reused as if it were today's model.  Empty when nothing differs or nothing is known (no
    ``config.yaml``, a class that no longer imports); an argument added later is absent from the saved
    file and is not a difference."""
    import inspect

    from zoo.experiments.compare import class_arguments

    try:
        saved = _read_yaml(str(run_dir / "config.yaml"), (run_dir / "config.yaml").stat().st_mtime_ns)
    except (OSError, yaml.YAMLError):
        return []
    out: list[str] = []
    for section in ("model", "data"):
        ran, now = (saved or {}).get(section), cfg.get(section)
        if not isinstance(ran, dict) or not isinstance(now, dict) or ran.get("class_path") != now.get("class_path"):
            continue
        defaults = class_arguments(str(now.get("class_path"))) or {}
        given = now.get("init_args") or {}
        for key, value in sorted((ran.get("init_args") or {}).items()):
            default = defaults.get(key, inspect.Parameter.empty)
            if key in given or default is inspect.Parameter.empty:
                continue  # the recipe's own value (in the hash), or an argument without a default
            if _canonical(value) != _canonical(default):
                out.append(f"{section}.init_args.{key}: ran {value!r}, now {default!r}")
    return out


def _canonical(value: Any) -> str:
    """A value as YAML/JSON round-trips it (tuples as lists, paths as strings) for comparison."""
    return json.dumps(value, sort_keys=True, default=str)


def _stored_meta(run: Run) -> dict[str, Any]:
    try:
        return json.loads((run.run_dir / "reproduce.json").read_text())
    except (OSError, ValueError):
        return {}


def make_plan(cells: list[Cell], opts: Options) -> list[Step]:
    """Every step of the invocation, in execution order, each run once: a pre-training before the
    first cell that loads it; cells already finished are reused, cells whose config and seed ran (or
    will run earlier in this plan) elsewhere are shared, cells without data are skipped."""
    roots = [opts.out, *opts.share]
    measured = measured_timings(r for r in (*roots, opts.archive) if r is not None and r.is_dir())  # + kept records
    twins = twin_index(r for r in roots if r.is_dir()) if not opts.force else {}
    kept = twin_index([opts.archive]) if opts.archive is not None and opts.archive.is_dir() and not opts.force else {}
    steps: list[Step] = []
    by_dir: dict[Path, Step] = {}
    planned: dict[tuple[str, int], Path] = {}  # (share key, seed) of cells this plan runs

    def add(run: Run, label: str, pretrain: bool) -> Step:
        if run.run_dir in by_dir:
            return by_dir[run.run_dir]
        if run.done and not opts.force:
            meta = _stored_meta(run)
            # another config's run, or an old run a re-run was to replace ("running"/"failed": it never did)
            stale = meta.get("config_hash") not in (None, run.hash) or meta.get("status") in ("running", "failed")
            changed = [] if stale else changed_defaults(run.run_dir, run.cfg)
            why = ("code defaults changed since it ran: " + "; ".join(changed)) if changed else ""
            step = Step(run, "reuse", label, reason=why, stale=stale or bool(changed))
        elif not pretrain and (src := kept.get((share_key(run.cfg, run.seed), run.seed))) is not None \
                and not changed_defaults(src, run.cfg):
            step = Step(run, "restore", label, source=src)
        else:
            twin = None
            if not pretrain and not opts.force:
                twin = planned.get((share_key(run.cfg, run.seed), run.seed))
                if twin is None:
                    twin = find_twin(run, roots, twins)
                    twin = None if twin is not None and changed_defaults(twin, run.cfg) else twin
            if twin is not None:
                step = Step(run, "share", label, source=twin)
            else:
                if run.pretrain is not None:
                    add(run.pretrain, f"pre-training {run.pretrain.run_dir.name} (for {label})", True)
                resume = (not opts.force and (run.run_dir / "last.ckpt").is_file()
                          and _stored_meta(run).get("config_hash") == run.hash
                          and not changed_defaults(run.run_dir, run.cfg))  # else its checkpoint is another model's
                carried = None if resume or pretrain or opts.force else carried_fit(run, opts)
                step = Step(run, "resume" if resume or carried else "run", label, source=carried)
                step.estimate_s, step.basis, step.likely_s = estimate(
                    run, measured, _epochs_done(carried or run.run_dir) if resume or carried else 0,
                    _patience_left(carried or run.run_dir, run.cfg) if resume or carried else 0)
                if not pretrain:
                    planned[(share_key(run.cfg, run.seed), run.seed)] = run.run_dir
        by_dir[run.run_dir] = step
        steps.append(step)
        return step

    for cell in cells:
        if cell.run is None:
            steps.append(Step(None, "skip", cell.label, reason=cell.reason))
        elif cell.run.missing and not cell.run.done:
            steps.append(Step(cell.run, "skip", cell.label,
                              reason="missing raw data: expected " + ", ".join(cell.run.missing)))
        else:
            add(cell.run, cell.label, False)
    fits = [s for s in steps if s.fits]
    for i, s in enumerate(fits, 1):
        s.index = i
    return steps


def plan_text(steps: list[Step], opts: Options) -> str:
    """The plan as printed by both ``--dry-run`` and a real run: one line per ``zoo fit`` (index,
    action, what, estimate, folder), then reused and shared cells, then skips grouped by reason."""
    fits = [s for s in steps if s.fits]
    known = [s.estimate_s for s in fits if s.estimate_s is not None]
    total = fmt_s(sum(known)) + (" + runs without a timing" if len(known) < len(fits) else "")
    likely = [s.likely_s if s.likely_s is not None else s.estimate_s for s in fits if s.estimate_s is not None]
    n_likely = sum(s.likely_s is not None for s in fits)
    typical = (f"; likely about {fmt_s(sum(likely))}, from the epochs that finished runs of the same model and "
               f"data took here ({n_likely} of {len(fits)} runs; the others at their bound)") if n_likely else ""
    lines = [f"plan: {len(fits)} zoo fit run(s), estimated ≤ {total} in total (an estimate: max_epochs × "
             f"seconds per epoch; early stopping usually ends sooner{typical}); "
             f"{sum(s.action == 'reuse' for s in steps)} reused, {sum(s.action == 'restore' for s in steps)} restored, "
             f"{sum(s.action == 'share' for s in steps)} shared, "
             f"{sum(s.action == 'skip' for s in steps)} skipped; recipes from {opts.recipes}, outputs in {opts.out}"]
    n = len(fits)
    for s in steps:
        assert s.run is not None or s.action == "skip"
        if s.fits:
            lines.append(f"  [{s.index}/{n}] {s.action:<6} {s.label}  est ≤ {fmt_s(s.estimate_s)} ({s.basis})  "
                         f"-> {s.run.run_dir}" + (f"  (the unfinished fit kept in {s.source})" if s.source else ""))
        elif s.action == "reuse":
            why = s.reason or "finished with another config"
            lines.append(f"  reuse  {s.label}{f' (STALE: {why}; --force re-runs)' if s.stale else ''}"
                         f"  {s.run.run_dir}")
        elif s.action == "share":
            lines.append(f"  share  {s.label}  = {s.source}")
        elif s.action == "restore":
            lines.append(f"  restore {s.label}  from {s.source}")
    skips: dict[str, list[str]] = {}
    for s in steps:
        if s.action == "skip":
            skips.setdefault(s.reason, []).append(s.label)
    for reason, labels in skips.items():
        lines.append(f"  skip   {len(labels)} cell(s) ({', '.join(labels[:3])}{', ...' if len(labels) > 3 else ''}): "
                     f"{reason}")
    notes = {emulated_bf16_note((s.run.cfg.get("trainer") or {}).get("precision"),
                                (s.run.cfg.get("trainer") or {}).get("accelerator", "auto")) for s in fits}
    lines += [f"note: {note}" for note in sorted(n for n in notes if n)]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- running
def _metrics_csv(run_dir: Path, since: float, earlier: frozenset[Path] = frozenset()) -> Path | None:
    """The CSV log this fit writes (``logs/version_*/metrics.csv``, the newest since ``since``; none of
    ``earlier``, the logs of the fits a resumed one continues, copied in just before it started)."""
    found = [p for p in run_dir.glob("logs/version_*/metrics.csv") if p not in earlier and p.stat().st_mtime >= since - 1]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _epoch_rows(csv_path: Path, monitor: str | None) -> dict[int, tuple[str, float]]:
    """{epoch: (validation metric, value)} of the validation rows written so far."""
    rows: dict[int, tuple[str, float]] = {}
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            for r in csv.DictReader(f):
                key = monitor if monitor and r.get(monitor) else next(
                    (k for k in r if k and k.startswith("val/") and r[k]), None)
                if key and r.get("epoch"):
                    rows[int(float(r["epoch"]))] = (key, float(r[key]))
    except (OSError, ValueError, csv.Error):
        pass  # a file being rewritten: read it again at the next poll
    return rows


def _failure_reason(log: Path) -> str:
    """The last error line of a ``zoo fit`` log (``zoo: error ...`` or a traceback's last line)."""
    try:
        lines = [ln.strip() for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    for ln in reversed(lines):
        if ln.startswith("zoo: error") or re.match(r"^[A-Za-z_.]*(Error|Exception)\b", ln):
            return ln[:300]
    return lines[-1][:300] if lines else ""


def _remove_empty_dirs(folder: Path, stop: Path) -> None:
    """Remove empty folders under and including ``folder``, then its empty parents up to ``stop``."""
    if folder.is_dir():
        for d in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                d.rmdir()
    d = folder
    while d != stop and stop in d.parents:
        try:
            d.rmdir()
        except OSError:
            break
        d = d.parent


TERM_GRACE_S = 60.0  # how long a stopped fit child may take to end its step before it is killed
# exit codes of a fit ended by a signal (zoo fit exits 143 after SIGTERM, having written last.ckpt):
# its checkpoint is sound, so a resume that ends so is never restarted from scratch
STOPPED_BY_SIGNAL = frozenset({128 + signal.SIGTERM, 128 + signal.SIGINT, -signal.SIGTERM, -signal.SIGINT, -signal.SIGKILL})
_CHILDREN: set[subprocess.Popen] = set()  # the zoo fit processes running now (several under --jobs)
_CHILDREN_LOCK = threading.Lock()
_STOPPING = threading.Event()  # set when a --jobs invocation is interrupted: its workers stop
_SLOT = threading.local()  # .env: the environment of this --jobs worker's fits


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Inside, SIGTERM to this process raises ``SystemExit(143)`` instead of ending it on the spot,
    so that :func:`_watch` stops its ``zoo fit`` child too (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_exit(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, raise_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM to fit children, all at once (Lightning ends each at its next step, where the fit
    writes ``last.ckpt``: the next plan resumes there), SIGKILL for those still running after :data:`TERM_GRACE_S`."""
    procs = [p for p in procs if p.poll() is None]
    for p in procs:
        p.terminate()
    deadline = time.time() + TERM_GRACE_S
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _stop_children() -> None:
    """Every running fit child of this invocation (several under ``--jobs``)."""
    with _CHILDREN_LOCK:
        procs = list(_CHILDREN)
    _stop(procs)


def _watch(cmd: list[str], logf: Any, env: dict[str, str], step: Step, n: int, opts: Options, t0: float) -> int:
    """Run ``cmd`` with its output in ``logf``; print one line per finished validation epoch.
    If this process is interrupted or sent SIGTERM, the child is stopped before it returns."""
    with _sigterm_raises():
        if _STOPPING.is_set():  # --jobs: the invocation is being stopped; start nothing more
            raise SystemExit(143)
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=str(Path.cwd()))
        with _CHILDREN_LOCK:
            _CHILDREN.add(proc)
        try:
            rc = _watch_child(proc, step, n, opts, t0)
        except BaseException:
            _stop([proc])
            raise
        finally:
            with _CHILDREN_LOCK:
                _CHILDREN.discard(proc)
        if _STOPPING.is_set():  # stopped from the main thread: not a failure of this run
            raise SystemExit(143)
        return rc


def _watch_child(proc: subprocess.Popen, step: Step, n: int, opts: Options, t0: float) -> int:
    monitor = step.run.cfg.get("monitor")
    max_epochs = (step.run.cfg.get("trainer") or {}).get("max_epochs")
    shown: set[int] = set()
    csv_path = None
    earlier = frozenset(step.run.run_dir.glob("logs/version_*/metrics.csv"))  # a resumed fit logs to a new version
    while True:
        try:
            rc = proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            rc = None
        csv_path = csv_path or _metrics_csv(step.run.run_dir, t0, earlier)
        if csv_path is not None:
            for epoch, (key, value) in sorted(_epoch_rows(csv_path, monitor).items()):
                if epoch not in shown:
                    shown.add(epoch)
                    of = f"/{max_epochs}" if max_epochs not in (None, -1) else ""
                    opts.log(f"  [{step.index}/{n}] epoch {epoch + 1}{of}  {key} {value:.4f}  "
                             f"elapsed {fmt_s(time.time() - t0)}")
        if rc is not None:
            return rc


def fit_command(run: Run, opts: Options, resume: bool) -> list[str]:
    """The ``zoo fit`` command line of a run: ``--ckpt_path last`` to resume its folder's run;
    ``--overwrite true`` when starting afresh over a folder that holds an earlier run (a stale one
    under ``--force``, or the leftovers of a failed one), which the fit refuses otherwise
    (``zoo.runfiles.check_fit_folder``) and replaces only once it writes its first checkpoint."""
    from zoo.runfiles import FIT_FILES

    cmd = [sys.executable, "-c", ENTRY, "fit", "--config", str(run.run_dir / "recipe.yaml"), "--seed_everything",
           str(run.seed), "--run_dir", str(run.run_dir), "--wandb", opts.wandb]
    if opts.last_every_n_steps > 0:  # a stop inside a long epoch then loses at most N steps (resumed exactly)
        cmd += ["--last_every_n_steps", str(opts.last_every_n_steps)]
    if resume:
        return cmd + ["--ckpt_path", "last"]
    if any((run.run_dir / f).exists() for f in FIT_FILES):
        cmd += ["--overwrite", "true"]
    return cmd


def fit(step: Step, n: int, opts: Options) -> dict[str, Any]:
    """Run ``zoo fit`` for one planned step (its own process, log in ``<run_dir>/zoo.log``)."""
    run = step.run
    meta_path = run.run_dir / "reproduce.json"
    run.run_dir.mkdir(parents=True, exist_ok=True)
    recipe_path = run.run_dir / "recipe.yaml"
    atomic_write(recipe_path, f"# materialised by zoo/experiments/reproduce.py; config hash {run.hash}\n"
                 + yaml.safe_dump(run.cfg, sort_keys=False))
    # "running" with this hash: a kill before the fit replaces an old run (--force, or a stale one)
    # leaves the old test_metrics.json, which the next plan then shows as stale, never as this config's
    atomic_write(meta_path, json.dumps({"config_hash": run.hash, "seed": run.seed, "status": "running"}, indent=2))
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_RUN_GROUP=run.group, WANDB_JOB_TYPE=run.job_type,
               **getattr(_SLOT, "env", {}))  # --jobs: this slot's threads and GPU
    resume = step.action == "resume"
    if resume and step.source is not None:
        take_carried(step.source, run.run_dir)
        opts.log(f"[{step.index}/{n}] {step.label}: took the unfinished fit kept in {step.source} "
                 f"({_epochs_done(run.run_dir)} epoch(s) done)")
    before = _epochs_done(run.run_dir) if resume else 0  # the wall time below is this leg's only
    opts.log(f"[{step.index}/{n}] start {step.label}{' (resume from last.ckpt)' if resume else ''}  "
             f"est ≤ {fmt_s(step.estimate_s)}  -> {run.run_dir}")
    t0 = time.time()
    with open(run.run_dir / "zoo.log", "a", encoding="utf-8") as logf:
        cmd = fit_command(run, opts, resume)
        logf.write(f"\n$ {' '.join(cmd)}\n")
        logf.flush()
        rc = _watch(cmd, logf, env, step, n, opts, t0)
        if rc != 0 and resume and rc not in STOPPED_BY_SIGNAL:  # a checkpoint cut off by a kill: start again
            logf.write("\n[reproduce] resuming failed; starting again from scratch\n")
            before = 0
            cmd = fit_command(run, opts, False)
            logf.write(f"\n$ {' '.join(cmd)}\n")
            logf.flush()
            rc = _watch(cmd, logf, env, step, n, opts, t0)
    wall = time.time() - t0
    ok = rc == 0 and run.done
    meta = {"config_hash": run.hash, "seed": run.seed, "status": "done" if ok else "failed", "wall_time_s": round(wall, 2),
            "returncode": rc, **({"epochs_before": before} if before else {})}
    atomic_write(meta_path, json.dumps(meta, indent=2))
    if not ok:
        why = _failure_reason(run.run_dir / "zoo.log") or f"zoo fit exited {rc}"
        _remove_empty_dirs(run.run_dir, opts.out)  # the log and the reason stay; no empty logs/ or wandb/
        opts.log(f"[{step.index}/{n}] FAILED {step.label} after {fmt_s(wall)} (exit {rc}): {why} "
                 f"- see {run.run_dir / 'zoo.log'}")
        return {**meta, "reason": f"zoo fit exited {rc}: {why} (see {run.run_dir / 'zoo.log'})"}
    tm = json.loads((run.run_dir / "test_metrics.json").read_text()).get("test", {})
    key = str(run.cfg.get("monitor") or "").replace("val/", "test/", 1)
    key = key if key in tm else next(iter(sorted(tm)), "")
    shown = f"{key} {tm[key]:.4f}" if key else "no test metrics"
    opts.log(f"[{step.index}/{n}] done  {step.label} in {fmt_s(wall)}: {shown}")
    return meta


def share(step: Step, outcomes: dict[Path, dict[str, Any]], opts: Options) -> dict[str, Any]:
    """Copy the finished twin's test metrics into this cell's folder (no second ``zoo fit``)."""
    run, src = step.run, step.source
    if not (src / "test_metrics.json").is_file():
        why = outcomes.get(src, {}).get("reason", "it did not finish")
        return {"status": "failed", "reason": f"shares {src}, which failed: {why}"}
    run.run_dir.mkdir(parents=True, exist_ok=True)
    # ranks first: a shared test_metrics.json never stands beside another run's (or no) ranks.npz
    if (src / "ranks.npz").is_file():
        atomic_write(run.run_dir / "ranks.npz", (src / "ranks.npz").read_bytes())
        note = ""
    else:  # a twin tested before per-user ranks existed: its cells fall back to mean ± std over seeds
        (run.run_dir / "ranks.npz").unlink(missing_ok=True)
        note = " (it has no ranks.npz: no CI for this cell)"
    atomic_write(run.run_dir / "test_metrics.json", (src / "test_metrics.json").read_text())
    meta = {**json.loads((src / "reproduce.json").read_text()), "twin_of": str(src)}
    atomic_write(run.run_dir / "reproduce.json", json.dumps(meta, indent=2))
    opts.log(f"share {step.label}: same config and seed as {src}{note}")
    return {**meta, "status": "reused"}


# what ``--archive`` keeps of a finished cell: everything its table, figures, staleness check and
# time estimates read, none of its checkpoints; test_metrics.json last (a record is whole once it is there)
ARCHIVE_FILES = ("recipe.yaml", "config.yaml", "ranks.npz", "reproduce.json", "test_metrics.json")
ARCHIVE_LOGS = "logs/version_*/metrics.csv"


def _present(run_dir: Path, names: tuple[str, ...]) -> list[str]:
    """The CSV logs and those of ``names`` that ``run_dir`` holds, relative, in publishing order."""
    logs = sorted(str(p.relative_to(run_dir)) for p in run_dir.glob(ARCHIVE_LOGS))
    return logs + [f for f in names if (run_dir / f).is_file()]


def _record_files(run_dir: Path) -> list[str]:
    """The files of ``run_dir`` that ``--archive`` keeps, relative, in publishing order."""
    return _present(run_dir, ARCHIVE_FILES)


def _write_if_changed(path: Path, data: bytes) -> None:
    """Publish ``data`` at ``path`` (atomically) unless the file already holds exactly it."""
    if not path.is_file() or path.read_bytes() != data:
        atomic_write(path, data)


def _publish_record(src: Path, dest: Path, meta: dict[str, Any]) -> None:
    """Copy the record of ``src`` (:func:`_record_files`) to ``dest`` with ``meta`` as its
    ``reproduce.json``: another record's ``test_metrics.json`` is removed first and this one's is
    written last, so ``dest`` is never a whole record of mixed runs; no stale logs or ranks stay;
    files already equal are not rewritten."""
    names = _record_files(src)
    done_marker = dest / "test_metrics.json"
    if done_marker.is_file() and done_marker.read_bytes() != (src / "test_metrics.json").read_bytes():
        done_marker.unlink()
    for extra in (p for p in dest.glob(ARCHIVE_LOGS) if str(p.relative_to(dest)) not in names):
        extra.unlink()  # an earlier record's logs (a re-run with --force) never stand beside this one's
    if "ranks.npz" not in names:
        (dest / "ranks.npz").unlink(missing_ok=True)
    for name in names:
        _write_if_changed(dest / name, json.dumps(meta, indent=2).encode() if name == "reproduce.json"
                          else (src / name).read_bytes())


def archive_run(run: Run, opts: Options) -> Path | None:
    """Keep a finished cell's record under ``--archive`` (same layout as ``--out``), so that a table can
    be re-rendered or extended on another machine, or after ``--out`` is gone, without running it again.
    A shared cell keeps its twin's whole record; a restored one is there already."""
    if opts.archive is None or not run.done:
        return None
    meta = _stored_meta(run)
    dest = opts.archive / run.run_dir.relative_to(opts.out)
    if meta.get("restored_from"):
        return dest
    if _would_replace_the_tables(dest, run, opts):
        return None
    twin = Path(meta.pop("twin_of", "") or run.run_dir)
    src = twin if twin.is_dir() else run.run_dir  # share() copied the twin's meta: hash and seed of its recipe.yaml
    _publish_record(src, dest, meta)
    drop_carried(dest / UNFINISHED)  # the finished record replaces the unfinished fit kept before
    return dest


# ``--archive-unfinished``: an unfinished cell's fit, kept under ``<cell's record>/unfinished/`` when the
# invocation ends or is stopped, and resumed from there by a plan on another machine (``runs/`` is not
# committed; a session's machine may not come back).  reproduce.json last: the copy is whole once it is there.
UNFINISHED = "unfinished"
CARRIED_FILES = ("recipe.yaml", "config.yaml", "best.ckpt", "last.ckpt")


def _overrides(opts: Options) -> str:
    """The flags by which this invocation's configs differ from the recipes' ("" when none)."""
    return ", ".join(f for f, on in (("--set", opts.sets), ("--max-epochs", opts.max_epochs is not None),
                                     ("--limit-train-batches", opts.limit_train_batches is not None)) if on)


def _would_replace_the_tables(dest: Path, run: Run, opts: Options) -> bool:
    """``dest`` holds the finished record of another config of this cell, and this run's config is
    the recipe's changed by flags (a variant, e.g. ``--set model.init_args.loss=bpr``): keeping the
    variant there would replace the table's record, so it is not kept (and it says so).  Without such
    flags the recipe itself changed since, and the new record replaces the old one, as intended."""
    flags = _overrides(opts)
    if not flags or not (dest / "test_metrics.json").is_file():
        return False
    try:
        held = json.loads((dest / "reproduce.json").read_text()).get("config_hash")
    except (OSError, ValueError):
        return False
    if held in (None, run.hash):
        return False
    opts.log(f"NOT KEPT in the archive: {dest} holds the record of another config of this cell ({held}), and this "
             f"run's config is the recipe's changed by {flags}; keeping it there would replace that record. "
             "Give such variants an --archive of their own")
    return True


def _carry_dir(run: Run, opts: Options) -> Path | None:
    if opts.archive is None:
        return None
    try:
        return opts.archive / run.run_dir.relative_to(opts.out) / UNFINISHED
    except ValueError:
        return None


def carried_fit(run: Run, opts: Options) -> Path | None:
    """The unfinished fit of this cell kept in ``--archive`` with its config and seed (and no code
    default changed since), which a plan resumes instead of starting afresh; else None."""
    d = _carry_dir(run, opts)
    if d is None or not (d / "last.ckpt").is_file():
        return None
    try:
        meta = json.loads((d / "reproduce.json").read_text())
    except (OSError, ValueError):
        return None  # no reproduce.json: a copy cut off while being written
    if meta.get("status") != "unfinished" or meta.get("config_hash") != run.hash or meta.get("seed") != run.seed:
        return None
    return None if changed_defaults(d, run.cfg) else d


def keep_unfinished(run: Run, opts: Options) -> Path | None:
    """Copy an unfinished cell's fit (``last.ckpt``, ``best.ckpt``, configs, CSV logs) to
    ``--archive``'s ``<cell>/unfinished/``; None when there is none to keep (finished, never started,
    or another config's checkpoint)."""
    dest = _carry_dir(run, opts)
    if dest is None or run.done or not (run.run_dir / "last.ckpt").is_file() \
            or _stored_meta(run).get("config_hash") != run.hash or _would_replace_the_tables(dest.parent, run, opts):
        return None
    names = _present(run.run_dir, CARRIED_FILES)
    (dest / "reproduce.json").unlink(missing_ok=True)  # not a whole copy until it is written again
    for old in [p for p in dest.rglob("*") if p.is_file() and str(p.relative_to(dest)) not in names]:
        old.unlink()
    for name in names:
        data = (run.run_dir / name).read_bytes()
        _write_if_changed(dest / name, weights_only_checkpoint(data) if name == "best.ckpt" else data)
    meta = {"config_hash": run.hash, "seed": run.seed, "status": "unfinished",
            "epochs_done": _epochs_done(run.run_dir)}
    atomic_write(dest / "reproduce.json", json.dumps(meta, indent=2))
    return dest


def weights_only_checkpoint(data: bytes) -> bytes:
    """A Lightning checkpoint without its optimiser and scheduler states (two thirds of an Adam
    checkpoint), for a carried ``best.ckpt``: the resumed fit only tests it, or replaces it when an
    epoch improves (``last.ckpt`` carries the state it resumes from).  Read with
    ``weights_only=True``; bytes that are not such a checkpoint are returned unchanged."""
    import io

    import torch

    try:
        ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not a checkpoint torch reads safely: carried as it is
        return data
    if not isinstance(ckpt, dict) or "optimizer_states" not in ckpt:
        return data
    slim = {k: v for k, v in ckpt.items() if k not in ("optimizer_states", "lr_schedulers")}
    buf = io.BytesIO()
    torch.save(slim, buf)
    return buf.getvalue()


def take_carried(src: Path, run_dir: Path) -> None:
    """Copy a kept unfinished fit into its cell's folder, to resume there: what an earlier fit in the
    folder left (its checkpoints, its CSV logs, which would mix into the curves) is replaced."""
    for p in [*run_dir.glob(ARCHIVE_LOGS), run_dir / "best.ckpt", run_dir / "last.ckpt"]:
        p.unlink(missing_ok=True)
    for name in _present(src, CARRIED_FILES):
        atomic_write(run_dir / name, (src / name).read_bytes())


def drop_carried(folder: Path) -> None:
    """Remove a kept unfinished fit (its cell has finished, or been restored): reproduce.json first."""
    if folder.is_dir():
        (folder / "reproduce.json").unlink(missing_ok=True)
        for p in sorted(folder.rglob("*"), key=lambda q: len(q.parts), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        folder.rmdir()


def restore(step: Step, opts: Options) -> dict[str, Any]:
    """Copy a cell's kept record from ``--archive`` into its run folder, then reuse it like a run
    finished here (the plan matched it by config and seed and found no code default changed).  An
    unfinished fit's checkpoints in the folder are removed: the record replaces that fit."""
    run, src = step.run, step.source
    meta = {**json.loads((src / "reproduce.json").read_text()), "config_hash": run.hash, "restored_from": str(src)}
    # an unfinished fit of the folder (killed before its test) is replaced by the record: its checkpoints
    # go first, so that no best.ckpt beside the restored metrics is taken for the one they came from
    unfinished = [p for p in (run.run_dir / "best.ckpt", run.run_dir / "last.ckpt") if p.is_file()]
    for p in unfinished:
        p.unlink()
    _publish_record(src, run.run_dir, meta)
    if unfinished:
        opts.log(f"restore {step.label}: removed an unfinished fit's {' and '.join(p.name for p in unfinished)}, "
                 "which the kept record replaces")
    opts.log(f"restore {step.label}: from {src}")
    return {**meta, "status": "reused", "stale": False}


def _finished_meanwhile(run: Run, opts: Options) -> bool:
    """The run was finished, with this config, after the plan was made: by another ``zoo reproduce``
    on the same folders (two invocations sharing the seeds of a table).  Never under ``--force``."""
    if opts.force or not run.done:
        return False
    meta = _stored_meta(run)
    return meta.get("config_hash") == run.hash and meta.get("status") == "done"


BUSY_POLL_S = 30.0  # how often a deferred step looks again whether the other process has released its folder


def _busy(run_dir: Path, names: tuple[str, ...] = (CLAIM_NAME, LOCK_NAME)) -> str | None:
    """Why the run folder cannot be fitted now: another live process holds its claim (another
    ``zoo reproduce``/``ablate`` invocation planned on the same folders, about to fit it or fitting
    it) or its fit lock (a ``zoo fit``); None when it is free.  ``names``: the lock files to look at."""
    from zoo.runfiles import RunFolderBusy, RunLock

    for name in names:
        if not (run_dir / name).exists():
            continue
        try:
            RunLock(run_dir, name).acquire().release()
        except RunFolderBusy as e:
            return str(e)
    return None


def _claim(s: Step, n: int, opts: Options) -> Any:
    """The folder's claim (``.reproduce.lock``), held while this process fits it: taken atomically, so
    of two invocations that both found the folder free only one fits it (the other would fail on the
    fit's lock and write "failed" over the first one's record); waits while another process holds the
    claim or the fit lock."""
    from zoo.runfiles import RunFolderBusy, RunLock

    waiting = False
    while True:
        try:
            claim = RunLock(s.run.run_dir, CLAIM_NAME).acquire()
        except RunFolderBusy:
            claim = None
        if claim is not None:
            if _busy(s.run.run_dir, (LOCK_NAME,)) is None:
                return claim
            claim.release()  # a fit of a process that holds no claim (a plain `zoo fit`, an orphan)
        if _STOPPING.is_set():
            raise SystemExit(143)
        if not waiting:
            opts.log(f"[{s.index}/{n}] waiting for the other process to release {s.run.run_dir}")
            waiting = True
        time.sleep(BUSY_POLL_S)


def _reused(s: Step) -> dict[str, Any]:
    """The outcome of a "reuse" step: its stored record."""
    return {**_stored_meta(s.run), "status": "reused", "stale": s.stale, **({"reason": s.reason} if s.reason else {})}


def _wait_while_busy(s: Step, n: int, opts: Options) -> None:
    """Wait while another process holds the step's run folder (or until a --jobs stop)."""
    if _busy(s.run.run_dir):
        opts.log(f"[{s.index}/{n}] waiting for the other process to release {s.run.run_dir}")
        while _busy(s.run.run_dir) and not _STOPPING.is_set():
            time.sleep(BUSY_POLL_S)


def _run_step(s: Step, outcomes: dict[Path | str, dict[str, Any]], n: int, opts: Options) -> dict[str, Any]:
    """A "run"/"resume" step: failed with its pre-training, reused when another process finished it
    since the plan was made, else fitted."""
    run = s.run
    pre = outcomes.get(run.pretrain.run_dir) if run.pretrain is not None else None
    if pre is not None and pre["status"] not in ("done", "reused"):
        opts.log(f"[{s.index}/{n}] FAILED {s.label}: its pre-training failed")
        return {"status": "failed", "reason": f"pre-training failed: {pre.get('reason', '')}"}
    claim = _claim(s, n, opts)
    try:
        if _finished_meanwhile(run, opts):  # re-checked now, under the claim: the plan may be hours old
            opts.log(f"[{s.index}/{n}] reuse {s.label}: finished by another process since the plan was made")
            return {**_stored_meta(run), "status": "reused", "stale": False}
        return fit(s, n, opts)
    finally:
        claim.release()


def execute_plan(steps: list[Step], opts: Options) -> dict[Path | str, dict[str, Any]]:
    """Execute the plan in order; the outcome of every step, keyed by run folder (skips by label).

    A step whose folder another process is fitting right now (two invocations planned on the
    same folders), or whose pre-training is such a step, waits until the rest of the plan is done;
    then it waits for the folder to be free and is reused if the other process finished it (a
    cell sharing such a step's run waits with it)."""
    _STOPPING.clear()  # a new plan: an earlier interrupted one (same process) stops nothing here
    if opts.jobs > 1 and not opts.dry_run:
        return _execute_parallel(steps, opts)
    outcomes: dict[Path | str, dict[str, Any]] = {}
    deferred: list[Step] = []
    later: set[Path] = set()  # run folders of the deferred steps
    n = sum(s.fits for s in steps)
    for s in steps:
        if s.action == "skip":
            outcomes[s.label] = {"status": "skipped", "reason": s.reason}
            continue
        run = s.run
        if run.run_dir in outcomes or run.run_dir in later:
            continue
        if opts.dry_run:
            out = {"status": "planned" if s.action != "reuse" else "reused", "stale": s.stale}
            if s.action == "reuse":
                out = {**_stored_meta(run), **out}
        elif s.action == "reuse":
            out = _reused(s)
        elif s.action == "restore":
            out = restore(s, opts)
        else:
            waits_for = s.source if s.action == "share" else run.pretrain.run_dir if run.pretrain is not None else None
            busy = None if waits_for in later or s.action == "share" else _busy(run.run_dir)
            if waits_for in later or busy:
                deferred.append(s)
                later.add(run.run_dir)
                why = busy or f"it needs {waits_for}, which another process is fitting"
                opts.log(f"[{s.index}/{n}] later: {s.label}: {why}; it comes after the rest of the plan")
                continue
            out = share(s, outcomes, opts) if s.action == "share" else _run_step(s, outcomes, n, opts)
        outcomes[run.run_dir] = out
    for s in deferred:
        if s.action == "share":
            outcomes[s.run.run_dir] = share(s, outcomes, opts)
            continue
        _wait_while_busy(s, n, opts)
        outcomes[s.run.run_dir] = _run_step(s, outcomes, n, opts)
    return outcomes


def visible_gpus() -> list[str]:
    """The GPUs a fit may use: ``CUDA_VISIBLE_DEVICES`` when set, else ``nvidia-smi -L``'s (no torch import)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, ln in enumerate(ln for ln in out.splitlines() if ln.startswith("GPU "))]


def slot_env(slot: int, jobs: int, gpus: list[str]) -> dict[str, str]:
    """Worker ``slot``'s share of the machine under ``--jobs``: cores/jobs threads (unless the user set
    ``OMP_NUM_THREADS``) and, where GPUs are visible, GPU ``slot mod #GPUs``."""
    env = {}
    if "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    return env


def _worker_step(s: Step, outcomes: dict[Path | str, dict[str, Any]], n: int, opts: Options,
                 env: dict[str, str]) -> dict[str, Any]:
    """One fit of a ``--jobs`` worker: waits while another invocation holds the folder, then
    :func:`_run_step` (reused if that one finished it)."""
    _SLOT.env = env
    _wait_while_busy(s, n, opts)
    if _STOPPING.is_set():
        raise SystemExit(143)
    return _run_step(s, outcomes, n, opts)


def _execute_parallel(steps: list[Step], opts: Options) -> dict[Path | str, dict[str, Any]]:
    """:func:`execute_plan` with up to ``opts.jobs`` fits at once: steps start in plan order as a
    worker is free and what they need is done (a fine-tuning its pre-training, a shared cell its
    run).  Interrupted (Ctrl-C, SIGTERM), it stops every running fit before it returns."""
    from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

    outcomes: dict[Path | str, dict[str, Any]] = {}
    todo: list[Step] = []
    for s in steps:
        if s.action == "skip":
            outcomes[s.label] = {"status": "skipped", "reason": s.reason}
        elif s.run.run_dir in outcomes or any(t.run.run_dir == s.run.run_dir for t in todo):
            continue
        elif s.action == "reuse":
            outcomes[s.run.run_dir] = _reused(s)
        elif s.action == "restore":
            outcomes[s.run.run_dir] = restore(s, opts)
        else:
            todo.append(s)
    n = sum(s.fits for s in steps)
    planned = {s.run.run_dir for s in todo}

    def needs(s: Step) -> Path | None:
        d = s.source if s.action == "share" else s.run.pretrain.run_dir if s.run.pretrain is not None else None
        return d if d in planned else None

    gpus = visible_gpus()
    free = list(range(opts.jobs))
    running: dict[Future, tuple[Step, int]] = {}
    with _sigterm_raises(), ThreadPoolExecutor(max_workers=opts.jobs) as pool:
        try:
            while todo or running:
                for s in list(todo):
                    dep = needs(s)
                    if dep is not None and dep not in outcomes:
                        continue
                    if s.action == "share":
                        todo.remove(s)
                        outcomes[s.run.run_dir] = share(s, outcomes, opts)
                    elif free:
                        todo.remove(s)
                        slot = free.pop(0)
                        running[pool.submit(_worker_step, s, outcomes, n, opts,
                                            slot_env(slot, opts.jobs, gpus))] = (s, slot)
                if not running:
                    break  # nothing can start (cannot happen: a step's needs come before it in the plan)
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for f in done:
                    s, slot = running.pop(f)
                    free.append(slot)
                    free.sort()
                    outcomes[s.run.run_dir] = f.result()
        except BaseException:
            _STOPPING.set()
            _stop_children()
            raise
    return outcomes


def record(cell: Cell, outcome: dict[str, Any]) -> dict[str, Any]:
    """One results row: identity, status, hash, checkpoint, wall time and every test metric."""
    run = cell.run
    rec: dict[str, Any] = {
        "paper": cell.paper, "table": cell.table, "dataset": cell.dataset, "model": cell.row, "seed": cell.seed,
        "status": outcome.get("status"), "reason": outcome.get("reason", ""), "stale": bool(outcome.get("stale", False)),
        "config_hash": (outcome.get("config_hash") or run.hash) if run else "",
        "run_dir": str(run.run_dir) if run else "",
        "checkpoint": "", "wall_time_s": outcome.get("wall_time_s"), "epochs": None,
        "pretrain_dir": str(run.pretrain.run_dir) if run and run.pretrain else "",
    }
    if rec["status"] == "reused":
        rec["status"] = "done"
    if run is not None and run.done and rec["status"] == "done":
        tm = json.loads((run.run_dir / "test_metrics.json").read_text())
        rec["checkpoint"] = tm.get("best_checkpoint") or ""
        rec["epochs"] = tm.get("epochs")
        env = tm.get("environment") or {}  # absent in runs from before it was recorded
        rec["torch_threads"], rec["git_commit"] = env.get("torch_threads"), env.get("git_commit")
        for k, v in sorted(tm.get("test", {}).items()):
            rec[k] = v
    return rec


def _keep_unfinished_all(cells: list[Cell], opts: Options) -> None:
    if opts.archive_unfinished:
        kept = [keep_unfinished(c.run, opts) for c in cells if c.run is not None]
        if any(kept):
            opts.log(f"kept {sum(k is not None for k in kept)} unfinished fit(s) (checkpoints) in {opts.archive}; "
                     "the next plan with this --archive resumes them")


def run_cells(cells: list[Cell], opts: Options) -> list[dict[str, Any]]:
    """Plan, print the plan, execute it (unless ``--dry-run``); one results row per cell."""
    for key in [k for k, n in opts.set_uses.items() if n == 0]:  # a typo, or a plan of models without it
        print(f"[{opts.command.split()[1] if ' ' in opts.command else 'reproduce'}] WARNING: --set {key}: no model "
              f"of this plan takes '{key.split('.', 2)[2]}' (not in its recipe nor its class's arguments; "
              "`zoo models` lists them); ignored", file=sys.stderr, flush=True)
    steps = make_plan(cells, opts)
    if not opts.quiet:
        print(plan_text(steps, opts), flush=True)
    try:
        outcomes = execute_plan(steps, opts)
    except BaseException:  # stopped (Ctrl-C, SIGTERM): keep what finished, and the unfinished fits if asked
        if opts.archive is not None and not opts.dry_run:
            kept = [archive_run(c.run, opts) for c in cells if c.run is not None and _finished_meanwhile(c.run, opts)
                    and not changed_defaults(c.run.run_dir, c.run.cfg)]
            if any(kept):
                opts.log(f"kept the records of {sum(k is not None for k in kept)} finished cell(s) in {opts.archive}")
            _keep_unfinished_all(cells, opts)
        raise
    if opts.archive is not None and not opts.dry_run:
        _keep_unfinished_all(cells, opts)
        kept = [archive_run(c.run, opts) for c in cells if c.run is not None
                and outcomes.get(c.run.run_dir, {}).get("status") in ("done", "reused")
                and not outcomes[c.run.run_dir].get("stale")]
        if any(kept):
            opts.log(f"kept the records of {sum(k is not None for k in kept)} finished cell(s) in {opts.archive}")
    return [record(c, outcomes[c.run.run_dir] if c.run is not None and c.run.run_dir in outcomes
                   else outcomes.get(c.label, {"status": "skipped", "reason": c.reason})) for c in cells]


# ----------------------------------------------------------------------------- statistics
def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std over seeds (the fallback cell of a run without per-user ranks; the plots)."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    m = sum(values) / n
    return m, (math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0)


N_BOOT = 10000  # bootstrap resamples and random sign vectors, as `zoo compare`'s default
STATS_SEED = 0


def _rows_with_ranks(recs: list[dict[str, Any]], rows_order: list[str]) -> dict[str, list[str]]:
    """``{row: its finished run folders}`` for the rows whose every finished seed has ``ranks.npz``."""
    rows: dict[str, list[str]] = {}
    for row in rows_order:
        done = [r for r in recs if r["model"] == row and r["status"] == "done" and r.get("run_dir")]
        if done and all((Path(r["run_dir"]) / "ranks.npz").is_file() for r in done):
            rows[row] = [r["run_dir"] for r in done]
    return rows


def _compare_rows(rows: dict[str, list[str]], metrics: list[str], reference_row: str | None = None) -> tuple[Any, list[str]]:
    """``zoo compare``'s table over ``rows``' run folders, models relabelled to the rows; ``(None, notes)``
    when the runs differ in users or one row's seeds do not form one model."""
    from zoo.experiments.compare import compare_runs

    dirs = [d for ds in rows.values() for d in ds]
    ref = rows[reference_row][0] if reference_row in rows else None
    try:
        table = compare_runs(dirs, reference=ref, metrics=metrics, n_boot=N_BOOT, seed=STATS_SEED)
    except (ValueError, KeyError, FileNotFoundError) as e:
        return None, [f"no CIs or paired test: {e}"]
    names: dict[str, str] = {}  # compare's label -> the table's row
    for m in table.models:
        owners = {row for row, ds in rows.items() for r in m.runs if str(r.path) in ds}
        if len(owners) != 1 or owners & set(names.values()):
            return None, [f"no CIs or paired test: the seeds of {sorted(owners | set(names.values()))} do not form "
                          "one model each (their saved configs differ beyond the seed)"]
        names[m.label] = owners.pop()
    table.relabel(names)
    return table, table.notes


def dataset_stats(recs: list[dict[str, Any]], rows_order: list[str], metrics: list[str],
                  reference_row: str | None = None) -> tuple[Any, list[str]]:
    """``zoo compare``'s table (:func:`zoo.experiments.compare.compare_runs`) over the finished runs
    of one dataset whose folders hold ``ranks.npz``, models relabelled to the table's rows, and the
    notes of the table.  A row is in it only when every finished seed has its ranks; the reference
    is ``reference_row`` when it is in it (an ablation's full model), else compare's default (the
    best baseline).  ``(None, notes)`` when fewer than one row qualifies or the runs differ in users."""
    rows = _rows_with_ranks(recs, rows_order)
    if not rows:
        return None, []
    table, notes = _compare_rows(rows, metrics, reference_row)
    if table is not None and reference_row in rows:
        table.reference_reason = "the full model, which every ablation row is compared with"
    return table, notes


def block_tests(recs: list[dict[str, Any]], blocks: dict[str, list[str]], metrics: list[str]) -> list[tuple[str, Any]]:
    """The paper's own claim where it tests within blocks (``significance.blocks``: {paper model: the
    baselines of its block}): per block whose model and at least one baseline have per-user ranks, the
    paired test of the model against the best of those baselines (compare's pick, on the monitored
    metric), over those two rows only, so Holm corrects over the claim's metrics and nothing else.
    Returns ``[(paper model, compare's table or None), ...]``."""
    out: list[tuple[str, Any]] = []
    for model, baselines in blocks.items():
        rows = _rows_with_ranks(recs, [model, *baselines])
        if model not in rows or len(rows) < 2:
            continue
        block, _ = _compare_rows(rows, metrics)
        if block is None or block.reference == model:
            out.append((model, None))
            continue
        pair, _ = _compare_rows({r: rows[r] for r in (model, block.reference)}, metrics, block.reference)
        if pair is not None:
            primary = block.reference_reason.removeprefix("the best baseline on ")
            pair.reference_reason = (f"the best on {primary} of this block's baselines: "
                                     + ", ".join(r for r in baselines if r in rows))
        out.append((model, pair))
    return out


def _cell_text(vals: list[float], paper: float | None, status: str, stats: Any = None) -> str:
    """``ours · paper value (relative difference)``; ours = mean [95% CI over users] ± std over seeds
    from ``stats`` (a row of compare's table), else mean ± std over seeds marked † (no per-user ranks)."""
    if stats is not None:
        mean = stats.mean
        ours = f"{mean:.4f} [{stats.ci_low:.4f}, {stats.ci_high:.4f}]" + (
            f" ± {stats.seed_std:.4f}" if stats.n_seeds > 1 else "")
    elif vals:
        mean, s = mean_std(vals)
        ours = (f"{mean:.4f} ± {s:.4f}" if len(vals) > 1 else f"{mean:.4f}") + " †"
    else:
        mean, ours = float("nan"), status
    if paper is None:
        return f"{ours} · paper —"
    if stats is None and not vals:
        return f"{ours} · paper {paper:.4f}"
    rel = (mean - paper) / paper * 100 if paper else float("nan")
    return f"{ours} · paper {paper:.4f} ({rel:+.1f}%)"


# ----------------------------------------------------------------------------- tables
def paper_value(table: dict[str, Any], dataset: str, row: str, metric: str) -> float | None:
    res = (table.get("results") or {}).get(dataset, {}).get(row, {})
    corr = (table.get("corrections") or {}).get(dataset, {}).get(row, {})
    v = corr.get(metric, res.get(metric))
    return None if v is None else float(v) * float(table.get("scale", 1.0))


def markdown_table(paper: str, table: dict[str, Any], rows_order: list[str], records: list[dict[str, Any]],
                   header: str, reference_row: str | None = None, not_implemented: Iterable[str] = ()) -> str:
    """Per dataset: ours (mean over users and seeds [95% bootstrap CI over users] ± std over seeds,
    the statistics of ``zoo compare``) · paper value (relative difference of our mean); skipped
    and failed cells with their reasons; then compare's paired sign-flip test over users of every
    row against the reference (the best baseline, or ``reference_row``), Holm-corrected across the
    dataset's table.  Rows whose runs have no ``ranks.npz`` show mean ± std over seeds (†)."""
    metrics: dict[str, str] = table["metrics"]
    out = io.StringIO()
    out.write(header)
    datasets = list(dict.fromkeys(r["dataset"] for r in records))
    for ds in datasets:
        recs = [r for r in records if r["dataset"] == ds]
        seeds = sorted({r["seed"] for r in recs})
        stats, notes = dataset_stats(recs, rows_order, list(metrics), reference_row)
        in_stats = {m.label for m in stats.models} if stats is not None else set()
        users = f" over {stats.n_users} test users" if stats is not None else ""
        out.write(f"\n### {ds}\n\n{len(seeds)} seed(s): {', '.join(map(str, seeds))}. "
                  f"Cell: ours mean{users} (seeds averaged) [95% percentile bootstrap CI over users, {N_BOOT} "
                  f"resamples] ± std of the per-seed values (none with one seed: its seed-to-seed variation is unknown) · "
                  f"paper value (relative difference of our mean).\n\n")
        out.write("| model | " + " | ".join(metrics.values()) + " |\n|---|" + "---|" * len(metrics) + "\n")
        fallback = False
        for row in rows_order + [r for r in not_implemented if r not in rows_order]:
            rr = [r for r in recs if r["model"] == row]
            if not rr and (row not in not_implemented or all(paper_value(table, ds, row, m) is None for m in metrics)):
                continue  # a column the paper prints but the zoo lacks is shown only beside a printed number
            done = [r for r in rr if r["status"] == "done"]
            status = "not implemented" if row in not_implemented else (rr[0]["status"] if rr else "—")
            fallback |= row not in in_stats and bool(done)
            cells = [_cell_text([float(r[f"test/{m}"]) for r in done if f"test/{m}" in r], paper_value(table, ds, row, m),
                                status, stats.row(row, m) if row in in_stats else None) for m in metrics]
            stale = " (stale)" if any(r.get("stale") for r in done) else ""
            ref = " (reference)" if stats is not None and row == stats.reference and len(in_stats) > 1 else ""
            out.write(f"| {row}{stale}{ref} | " + " | ".join(cells) + " |\n")
        skipped = [r for r in recs if r["status"] == "skipped"]
        failed = [r for r in recs if r["status"] == "failed"]
        for r in {r["model"]: r for r in skipped}.values():
            out.write(f"\n- skipped {r['model']}: {r['reason']}")
        for r in failed:
            out.write(f"\n- failed {r['model']} seed {r['seed']}: {r['reason']}")
        if fallback:
            out.write("\n- † not every run of this row has its per-user ranks (ranks.npz; tested before they were "
                      "written): mean ± std over seeds, no CI, not in the paired test; `zoo test --run DIR` adds them")
        for n in notes:
            out.write(f"\n- {n}")
        if skipped or failed or fallback or notes:
            out.write("\n")
        if stats is not None and len(in_stats) > 1:
            out.write("\n" + stats.paired_markdown())
        blocks = (table.get("significance") or {}).get("blocks") or {}
        for model, pair in block_tests(recs, blocks, list(metrics)) if stats is not None else []:
            out.write(f"\n**The paper's claim for {model}** (tested within its block, "
                      f"{(table.get('significance') or {}).get('versus', 'the best baseline of its block')}):\n\n")
            out.write(pair.paired_markdown() if pair is not None else
                      "no test: the runs of this block could not be compared (see the notes above).\n")
    return out.getvalue()


def write_results(folder: Path, stem: str, records: list[dict[str, Any]], markdown: str, extra: dict[str, Any]) -> None:
    """``<stem>.csv`` (one row per run, every metric column), ``<stem>.json``, ``table.md``-style markdown."""
    cols: list[str] = []
    for r in records:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for r in records:
        w.writerow(r)
    atomic_write(folder / f"{stem}.csv", buf.getvalue())
    atomic_write(folder / f"{stem}.json", json.dumps({**extra, "runs": records}, indent=2, default=str))
    atomic_write(folder / ("table.md" if stem == "results" else f"{stem}.md"), markdown)


def machine_line(probe_gpu: bool = True) -> str:
    """Host, OS, device, Python and torch versions (``probe_gpu=False``: no torch import, for a dry run)."""
    import platform

    from zoo.provenance import package_version

    dev = f"CPU ({os.cpu_count()} cores)"
    tv = package_version("torch") or "?"
    if probe_gpu:
        try:
            import torch

            dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else dev
        except Exception:  # noqa: BLE001 - the header is informative only
            pass
    return f"{platform.node()} · {platform.platform()} · {dev} · python {platform.python_version()} · torch {tv}"


def log_wandb_summary(group: str, name: str, records: list[dict[str, Any]], markdown: str, opts: Options) -> None:
    """One W&B run per group holding the results table (offline by default); no-op when W&B is off."""
    mode = os.environ.get("WANDB_MODE") or opts.wandb
    if opts.wandb == "off" or mode in ("off", "disabled") or not records:
        return
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        import wandb
    except ImportError:
        opts.log("wandb is not installed: no summary run")
        return
    cols = [c for c in dict.fromkeys(k for r in records for k in r) if c != "reason"]
    run = wandb.init(project="zoo", group=group, name=name, job_type="summary", dir=str(opts.out),
                     mode="online" if mode == "online" else "offline", reinit="create_new",
                     config={"group": group, "seeds": opts.seeds})
    run.log({"results": wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in records])})
    run.summary["table_markdown"] = markdown
    run.finish()


def plan_cell(specs: dict[str, Any], model: str, dspec: dict[str, Any], extra_args: dict[str, Any], run_dir: Path,
              seed: int, group: str, opts: Options) -> Run:
    """The run of ``model`` on one dataset: its per-dataset recipe if the dataset has one, else its
    generic recipe on the dataset's ``data_from`` data; ``extra_args`` (an ablation row) on top."""
    mine = (dspec.get("recipes") or {}).get(model)
    recipe, args = _spec(mine if mine is not None else specs[model])
    if mine is None:
        args = {**dict(specs[model].get("args") or {}), **args}
    data_cfg = None if mine is not None else load_recipe(dspec["data_from"], opts.recipes)
    return plan_run(recipe, {**args, **extra_args}, data_cfg, run_dir, seed, group, opts,
                    specs[model].get("pretrain_data"))


def table_cell(paper: str, table: str, specs: dict[str, Any], row: str, model: str, dataset: str,
               dspec: dict[str, Any], extra_args: dict[str, Any], run_dir: Path, seed: int, group: str,
               opts: Options) -> Cell:
    """The cell of ``row`` (run as ``model`` with ``extra_args``) on one dataset and seed."""
    if dspec.get("data_from") is None:
        return Cell(paper, table, dataset, row, seed, None,
                    reason=f"no zoo recipe for this dataset ({dspec.get('expects', '')})")
    return Cell(paper, table, dataset, row, seed, plan_cell(specs, model, dspec, extra_args, run_dir, seed, group, opts))


# ----------------------------------------------------------------------------- the main table
def main_rows(paper: str, numbers: dict[str, Any], models: list[str] | None) -> tuple[list[str], list[str]]:
    """(rows the zoo runs, in table order then reference rows; rows not implemented)."""
    table = numbers[paper]["main"]
    runnable, missing = [], []
    for name, spec in table["models"].items():
        (missing if spec.get("implemented") is False else runnable).append(name)
    runnable += list(table.get("reference") or {})
    if models:
        unknown = [m for m in models if m not in runnable and m not in missing]
        if unknown:
            raise KeyError(f"--models {unknown}: {paper}'s table has {runnable} (not implemented: {missing})")
        runnable = [m for m in runnable if m in models]
    return runnable, missing


def main_cells(paper: str, numbers: dict[str, Any], opts: Options, models: list[str] | None = None,
               datasets: list[str] | None = None) -> list[Cell]:
    """Every (dataset, row, seed) cell of a paper's main table, in table order."""
    table = numbers[paper]["main"]
    rows, _ = main_rows(paper, numbers, models)
    all_ds = list(table["datasets"])
    if datasets:
        unknown = [d for d in datasets if d not in all_ds]
        if unknown:
            raise KeyError(f"--datasets {unknown}: {paper}'s table has {all_ds}")
    specs = {**table["models"], **(table.get("reference") or {})}
    return [table_cell(paper, table["table"], specs, row, row, ds, table["datasets"][ds], {},
                       opts.out / paper / slug(ds) / f"{slug(row)}-s{seed}", seed, f"{paper}-{ds}", opts)
            for ds in (datasets or all_ds) for row in rows for seed in opts.seeds]


def write_main_table(paper: str, numbers: dict[str, Any], records: list[dict[str, Any]], opts: Options,
                     models: list[str] | None = None) -> None:
    """``<out>/<paper>/table.md`` + ``results.{csv,json}`` and the W&B summary; printed on a dry run."""
    table = numbers[paper]["main"]
    rows, not_impl = main_rows(paper, numbers, models)
    sig = table.get("significance") or {}
    header = (f"# {numbers[paper]['title']}\n\n{table['table']}: {table['caption']}.\n\n"
              f"Protocol: {table['protocol']}.\n\n"
              f"Command: `{opts.command}`\n\n"
              f"Machine: {machine_line(not opts.dry_run)}\n\n"
              f"Paper significance claim: {sig.get('text', 'none')}\n")
    md = markdown_table(paper, table, rows, records, header, not_implemented=not_impl)
    if opts.dry_run:
        if not opts.quiet:
            print(md)
        return
    folder = opts.out / paper
    write_results(folder, "results", records, md, {"paper": paper, "table": table["table"], "seeds": opts.seeds})
    for ds in dict.fromkeys(r["dataset"] for r in records):
        log_wandb_summary(f"{paper}-{ds}", f"{paper}-{slug(ds)}-summary",
                          [r for r in records if r["dataset"] == ds], md, opts)
    opts.log(f"wrote {folder / 'table.md'}, {folder / 'results.csv'}, {folder / 'results.json'}")


def reproduce(papers: list[str], numbers: dict[str, Any], opts: Options, models: list[str] | None = None,
              datasets: list[str] | None = None) -> list[dict[str, Any]]:
    """One plan over every paper's cells, executed (or only printed), then each paper's table."""
    cells = {p: main_cells(p, numbers, opts, models, datasets) for p in papers}
    records = run_cells([c for cs in cells.values() for c in cs], opts)
    out, i = [], 0
    for p, cs in cells.items():
        recs = records[i:i + len(cs)]
        i += len(cs)
        write_main_table(p, numbers, recs, opts, models)
        out += recs
    return out


# ----------------------------------------------------------------------------- CLI
def common_parser(prog: str, description: str, default_out: Path) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("--data-root", type=Path, default=None,
                    help="folder holding the raw datasets (recipes' data/... paths are looked up under it)")
    ap.add_argument("--recipes", type=Path, default=None,
                    help="recipes folder (default: the installed package's recipes, or the checkout's recipes/)")
    ap.add_argument("--seeds", type=int, default=1, help="number of seeds (0..N-1) per cell")
    ap.add_argument("--seed-list", type=int, nargs="+", default=None, help="explicit seeds (overrides --seeds)")
    ap.add_argument("--out", type=Path, default=default_out,
                    help=f"output folder (default {default_out}, git-ignored; the committed tables live in "
                         "benchmarks/results and are written only when it is given here)")
    ap.add_argument("--max-epochs", type=int, default=None, help="cap every run's trainer.max_epochs")
    ap.add_argument("--limit-train-batches", type=float, default=None, help="trainer.limit_train_batches of every run")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="override a dotted recipe key in every run, e.g. model.init_args.d=16 or "
                         "data.init_args.cache_dir=/tmp/c (a model key is skipped for models whose class lacks that "
                         "argument; a key no model takes is reported)")
    ap.add_argument("--wandb", choices=("off", "offline", "online"), default="offline",
                    help="W&B logging of every run (default offline; WANDB_MODE=disabled turns it off)")
    ap.add_argument("--archive", type=Path, default=None, metavar="DIR",
                    help="keep every finished cell's record (metrics, per-user ranks, config, CSV logs; no "
                         "checkpoints) in DIR, in --out's layout, and restore a cell from there instead of fitting it "
                         "again; commit DIR (the committed tables use benchmarks/archive) to carry a table's runs to "
                         "another machine")
    ap.add_argument("--archive-unfinished", action="store_true",
                    help="with --archive: when this invocation ends or is stopped, also keep each unfinished cell's "
                         "fit (last.ckpt, best.ckpt: a few MB each) in DIR, so that a plan on another machine resumes "
                         "it instead of starting again")
    ap.add_argument("--last-every-n-steps", type=int, default=0, metavar="N",
                    help="each zoo fit also refreshes last.ckpt every N training steps (zoo fit's "
                         "--last_every_n_steps), so that a plan killed without warning (SIGKILL) resumes inside "
                         "an epoch instead of at its start; a stopped one (SIGTERM) does so anyway, the resume is "
                         "exact either way (default 0: at epoch ends only)")
    ap.add_argument("--force", action="store_true", help="re-run finished runs (and ignore --archive's records)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="fit up to N cells at once (a cell still waits for its pre-training); each zoo fit gets "
                         "cores/N threads (OMP_NUM_THREADS, unless set) and, where GPUs are visible, GPU i mod #GPUs")
    ap.add_argument("--dry-run", action="store_true",
                    help="print the plan (every zoo fit that would run, with an estimated cost) and the table; run nothing")
    ap.add_argument("--numbers", type=Path, default=NUMBERS, help="paper numbers file")
    return ap


def options_from(ns: argparse.Namespace, command: str) -> Options:
    if ns.seeds < 1 and not ns.seed_list:
        raise ValueError("--seeds must be >= 1")
    if ns.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {ns.jobs}")
    if ns.last_every_n_steps < 0:
        raise ValueError(f"--last-every-n-steps must be >= 0, got {ns.last_every_n_steps}")
    if ns.archive_unfinished and ns.archive is None:
        raise ValueError("--archive-unfinished keeps unfinished fits in --archive's folder: give --archive DIR too")
    recipes = ns.recipes if ns.recipes is not None else default_recipes()
    if not recipes.is_dir():
        raise FileNotFoundError(f"--recipes {recipes}: not a folder")
    limit = ns.limit_train_batches
    if limit is not None and limit > 1:
        limit = int(limit)  # Lightning: a float is a fraction of the batches, an int a number of batches
    out = ns.out.absolute()
    # the other command's default folder: its finished cells are shared, not run again
    share = [d.absolute() for d in (DEFAULT_OUT, DEFAULT_ABLATE_OUT) if d.absolute() != out]
    return Options(out=out, recipes=recipes.absolute(), data_root=ns.data_root,
                   seeds=ns.seed_list or list(range(ns.seeds)), max_epochs=ns.max_epochs, limit_train_batches=limit,
                   sets=[parse_set(s) for s in ns.sets], wandb=ns.wandb, force=ns.force, dry_run=ns.dry_run,
                   command=command, share=share, jobs=ns.jobs,
                   archive=ns.archive.absolute() if ns.archive is not None else None,
                   archive_unfinished=ns.archive_unfinished, last_every_n_steps=ns.last_every_n_steps)


def main(argv: list[str] | None = None) -> int:
    ap = common_parser("zoo reproduce", "Reproduce a paper's main table through `zoo fit` (docs/reproduction.md).",
                       DEFAULT_OUT)
    ap.add_argument("--paper", required=True, choices=(*PAPERS, "all"))
    ap.add_argument("--models", nargs="+", default=None, help="only these columns (names as in paper_numbers.yaml)")
    ap.add_argument("--datasets", nargs="+", default=None, help="only these datasets ('default' = embedded)")
    ap.add_argument("--tune-trials", type=int, default=0,
                    help="also tune every row with this many Optuna trials (zoo tune) and report tuned beside untuned")
    ap.add_argument("--tune-timeout", type=float, default=None, help="seconds per row's study (same for every row)")
    argv = list(sys.argv[1:] if argv is None else argv)
    ns = ap.parse_args(argv)
    tune_failed = False
    try:
        opts = options_from(ns, "zoo reproduce " + " ".join(argv))
        numbers = load_numbers(ns.numbers)
        papers = list(PAPERS) if ns.paper == "all" else [ns.paper]
        if ns.paper == "all" and ns.datasets:
            raise ValueError("--datasets needs one --paper (dataset names differ between papers)")
        recs = reproduce(papers, numbers, opts, ns.models if ns.paper != "all" else None, ns.datasets)
        if ns.tune_trials > 0 and not opts.dry_run:  # equal budget for every row: docs/tune.md
            from zoo.experiments.tune import tune_table

            for p in papers:
                tuned = tune_table([r for r in recs if r["paper"] == p], numbers[p]["main"]["metrics"], opts.out / p,
                                   ns.tune_trials, ns.tune_timeout, opts.seeds, opts.wandb, log=opts.log)
                tune_failed |= any(r["status"].startswith("failed") for r in tuned)
    except (KeyError, ValueError, FileNotFoundError) as e:
        print(f"zoo reproduce: error: {e}", file=sys.stderr)
        return 2
    return 1 if tune_failed or any(r["status"] == "failed" for r in recs) else 0


if __name__ == "__main__":
    sys.exit(main())
