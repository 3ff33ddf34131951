"""``zoo tune``: equal-effort hyper-parameter search on Optuna (docs/tune.md).

    zoo tune --config recipes/timirec.yaml --trials 20 --timeout 3600
    zoo tune --config recipes/sasrec.yaml --space my_space.yaml --trials 10 --test-best --seeds 0 1 2
    zoo tune --config recipes/sasrec.yaml --trials 10 -- --trainer.max_epochs 20   # fit overrides after --

The search space is the recipe's ``tune:`` block (or ``--space FILE``, which replaces it): dotted recipe
keys mapped to a list of choices or one range ``{log: [lo, hi]}``, ``{float: [lo, hi]}``, ``{int: [lo, hi]}``.
Every key and every value is checked against the recipe's parser before the first trial.

Each trial is a real ``zoo fit`` of the recipe with the sampled values, run in this process through
``zoo.cli.run_cli`` into ``<out>/trials/trial-NNNN/`` with ``test_after_fit: false``; the test split is never
served (each trial folder's ``splits.json`` lists the dataloaders the datamodule served).  In-process, not a
subprocess per trial: Optuna's Lightning pruning callback then reports the monitored validation metric after
every validation round and stops the trial from inside ``trainer.fit``, the data cache and imports are loaded
once, and a trial that raises is caught by Optuna and recorded as FAIL (the study goes on).  A crash of the
process itself (OOM-kill, SIGKILL) loses only the running trial: the study lives in an RDB storage (SQLite by
default, ``<out>/study.db``) and a re-run with the same arguments resumes with every finished trial kept,
until ``--trials`` trials have finished (completed or pruned).

Outputs under ``--out`` (default ``runs/tune/<study>``): ``study.db``, ``trials/``, ``trials.csv`` and
``trials.md``, ``best.yaml`` (the recipe with the best values applied, fully resolved; ``zoo fit --config
best.yaml`` runs it), ``history.png`` and ``importances.png``, ``summary.json``; with ``--test-best``,
``best/seed-S/`` runs and ``best_test.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

RANGES = ("log", "float", "int")
DONE_STATES = ("COMPLETE", "PRUNED")


class TuneError(ValueError):
    """Bad tuning input (search space, recipe, study); the message names the key or file."""


# ----------------------------------------------------------------------------- the search space
@dataclass
class Param:
    """One dimension of the search space: a recipe key and its choices or range."""

    key: str
    kind: str  # categorical | log | float | int
    values: list[Any] = field(default_factory=list)  # the choices, or [lo, hi]

    def suggest(self, trial: Any) -> Any:
        """The trial's value (choices that are not scalars travel through Optuna as JSON text)."""
        if self.kind == "categorical":
            encoded = [_encode_choice(v) for v in self.values]
            return _decode_choice(trial.suggest_categorical(self.key, encoded))
        lo, hi = self.values
        if self.kind == "int":
            return trial.suggest_int(self.key, lo, hi)
        return trial.suggest_float(self.key, float(lo), float(hi), log=self.kind == "log")

    def probes(self) -> list[Any]:
        """Values checked against the recipe's parser before the study starts (every choice, both ends)."""
        return list(self.values) if self.kind == "categorical" else [self.values[0], self.values[1]]

    def describe(self) -> str:
        if self.kind == "categorical":
            return "{" + ", ".join(json.dumps(v) for v in self.values) + "}"
        return f"{self.kind}[{self.values[0]}, {self.values[1]}]"


def _encode_choice(v: Any) -> Any:
    return v if v is None or isinstance(v, (bool, int, float, str)) else "json:" + json.dumps(v)


def _decode_choice(v: Any) -> Any:
    return json.loads(v[5:]) if isinstance(v, str) and v.startswith("json:") else v


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def parse_space(space: Any, source: str) -> list[Param]:
    """``{key: [choices] | {log|float|int: [lo, hi]}}`` -> params; every problem names ``source`` and the key."""
    if space is None or (isinstance(space, (dict, list)) and not space):
        raise TuneError(f"{source}: the search space is empty; give at least one key, e.g. "
                        "`tune: {model.init_args.lr: {log: [1.0e-4, 1.0e-2]}}` (docs/tune.md)")
    if not isinstance(space, dict):
        raise TuneError(f"{source}: the search space must be a mapping of recipe keys to choices or ranges, "
                        f"got {type(space).__name__}")
    params = []
    for key, spec in space.items():
        where = f"{source}: tune key '{key}'"
        if not isinstance(key, str) or not key or key.startswith(".") or key.endswith(".") or ".." in key:
            raise TuneError(f"{where}: expected a dotted recipe key such as model.init_args.lr")
        if isinstance(spec, list):
            if not spec:
                raise TuneError(f"{where}: the list of choices is empty")
            params.append(Param(key, "categorical", list(spec)))
            continue
        if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in RANGES):
            raise TuneError(f"{where}: expected a list of choices or one range {{log|float|int: [lo, hi]}}, got {spec!r}")
        kind, bounds = next(iter(spec.items()))
        if not (isinstance(bounds, list) and len(bounds) == 2 and all(_is_number(b) for b in bounds)):
            raise TuneError(f"{where}: {kind} range needs two numbers [lo, hi], got {bounds!r}")
        lo, hi = bounds
        if kind == "int" and not all(isinstance(b, int) for b in bounds):
            raise TuneError(f"{where}: int range needs two integers [lo, hi], got {bounds!r}")
        if not lo < hi:
            raise TuneError(f"{where}: {kind} range needs lo < hi, got [{lo}, {hi}]")
        if kind == "log" and lo <= 0:
            raise TuneError(f"{where}: log range needs lo > 0, got [{lo}, {hi}]")
        params.append(Param(key, kind, [lo, hi]))
    return params


def quiet_warnings() -> None:
    """Drop two warnings that say nothing here: LightningCLI's "args given while sys.argv holds others" (run_cli
    is called in-process while sys.argv is `zoo tune ...`, on purpose) and Optuna's "heartbeat is experimental"."""
    import warnings

    for pattern in (r"LightningCLI's args parameter is intended",
                    r"Argument ``(heartbeat_interval|grace_period)`` is an experimental"):
        warnings.filterwarnings("ignore", message=pattern)


def load_yaml(path: Path, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except OSError as e:
        raise TuneError(f"{what} {path}: cannot be read ({e.strerror})") from e
    except yaml.YAMLError as e:
        raise TuneError(f"{what} {path} is not valid YAML: " + " ".join(str(e).split())) from e


def read_space(recipe: Path, space_file: Path | None) -> tuple[list[Param], dict[str, Any], str]:
    """The search space (``--space`` file, else the recipe's ``tune:`` block), its raw form and its source."""
    if space_file is not None:
        doc = load_yaml(space_file, "space file")
        if isinstance(doc, dict) and set(doc) == {"tune"}:  # a `tune:` block copied out of a recipe
            doc = doc["tune"]
        return parse_space(doc, str(space_file)), doc, str(space_file)
    doc = load_yaml(recipe, "recipe")
    if not isinstance(doc, dict):
        raise TuneError(f"recipe {recipe}: expected a mapping of recipe keys")
    if "tune" not in doc:
        raise TuneError(f"recipe {recipe} has no `tune:` block: the search space is empty; add one or pass "
                        "--space FILE (docs/tune.md)")
    return parse_space(doc["tune"], f"{recipe} (tune:)"), doc["tune"], f"{recipe} (tune:)"


def cli_value(v: Any) -> str:
    """A value as one command-line argument of the fit CLI (strings as they are, the rest as JSON/YAML)."""
    return v if isinstance(v, str) else json.dumps(v)


def override_args(values: dict[str, Any]) -> list[str]:
    return [a for k, v in values.items() for a in (f"--{k}", cli_value(v))]


def resolve_config(recipe: Path, extra: list[str], values: dict[str, Any]) -> dict[str, Any]:
    """The recipe as ``zoo fit --print_config`` resolves it (every default filled in), with ``values`` applied."""
    from jsonargparse import ArgumentError

    from zoo.cli import clear_message, run_cli

    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            run_cli(["fit", "--config", str(recipe), *extra, *override_args(values), "--print_config"])
    except SystemExit as e:
        if e.code not in (0, None):
            raise TuneError(f"recipe {recipe}: does not parse (exit {e.code})") from e
    except ArgumentError as e:
        raise TuneError(clear_message(e)) from e
    return yaml.safe_load(out.getvalue())


def get_dotted(cfg: dict[str, Any], key: str) -> Any:
    """``cfg['model']['init_args']['K']`` for ``model.init_args.K``; KeyError names the deepest existing level."""
    node: Any = cfg
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            at = ".".join(parts[:i]) or "the top level"
            there = sorted(node) if isinstance(node, dict) else []
            raise KeyError(f"no '{part}' at {at}" + (f" (keys there: {', '.join(map(str, there))})" if there else ""))
        node = node[part]
    return node


def check_space(params: list[Param], recipe: Path, extra: list[str], source: str) -> dict[str, Any]:
    """Every space key is a key of the resolved recipe and every probe value parses; returns the base config."""
    base = resolve_config(recipe, extra, {})
    for p in params:
        try:
            get_dotted(base, p.key)
        except KeyError as e:
            raise TuneError(f"{source}: tune key '{p.key}' is not a key of the recipe {recipe}: {e.args[0]}") from None
    for p in params:
        for v in p.probes():
            try:
                resolve_config(recipe, extra, {p.key: v})
            except TuneError as e:
                raise TuneError(f"{source}: tune key '{p.key}': value {v!r} does not fit the recipe: {e}") from None
    return base


# ----------------------------------------------------------------------------- one trial
class TrialRecorder:
    """Lightning callback (built lazily: no Lightning import at ``zoo tune --help``) that records which
    dataloaders the datamodule served and how many validation rounds ran, written to ``path`` as
    ``{"served": ["val", "train"], "validations": 2}``: the evidence that a trial never read the test split."""

    def __new__(cls, path: Path):
        from lightning.pytorch.callbacks import Callback

        class _TrialRecorder(Callback):
            def __init__(self) -> None:
                self.path, self.served, self.validations = Path(path), [], 0

            def setup(self, trainer, pl_module, stage: str) -> None:
                dm = trainer.datamodule
                if dm is None or getattr(dm, "_zoo_trial_recorder", None) is self:
                    return
                dm._zoo_trial_recorder = self
                for split in ("train", "val", "test", "predict"):
                    original = getattr(dm, f"{split}_dataloader")

                    def served(original=original, split=split):
                        if split not in self.served:
                            self.served.append(split)
                        return original()

                    setattr(dm, f"{split}_dataloader", served)

            def on_validation_end(self, trainer, pl_module) -> None:
                if not trainer.sanity_checking:
                    self.validations += 1

            def write(self) -> None:
                from zoo.runfiles import atomic_write

                atomic_write(self.path, json.dumps({"served": self.served, "validations": self.validations}) + "\n")

        return _TrialRecorder()


@contextlib.contextmanager
def wandb_group(group: str):
    """Every W&B run started inside joins ``group``; the run is finished on exit (Lightning's
    WandbLogger would otherwise reuse one run for every trial of this process)."""
    old = os.environ.get("WANDB_RUN_GROUP")
    os.environ["WANDB_RUN_GROUP"] = group
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("WANDB_RUN_GROUP", None)
        else:
            os.environ["WANDB_RUN_GROUP"] = old
        wandb = sys.modules.get("wandb")
        if wandb is not None and getattr(wandb, "run", None) is not None:
            wandb.finish()


@dataclass
class Study:
    """What every trial of one study shares."""

    recipe: Path
    extra: list[str]
    params: list[Param]
    out: Path
    monitor: str
    wandb: str
    group: str

    def trial_args(self, values: dict[str, Any], run_dir: Path) -> list[str]:
        return ["fit", "--config", str(self.recipe), *self.extra, *override_args(values), "--run_dir", str(run_dir),
                "--test_after_fit", "false", "--overwrite", "true", "--wandb", self.wandb, "--trainer.devices", "1",
                "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]

    def objective(self, trial: Any) -> float:
        """One real ``zoo fit`` on the validation split; returns the best value of the monitored metric."""
        from optuna_integration import PyTorchLightningPruningCallback

        from zoo.cli import run_cli
        from zoo.runfiles import atomic_write

        values = {p.key: p.suggest(trial) for p in self.params}
        run_dir = self.out / "trials" / f"trial-{trial.number:04d}"
        trial.set_user_attr("values", json.dumps(values))
        trial.set_user_attr("run_dir", str(run_dir))
        atomic_write(run_dir / "params.json", json.dumps(values, indent=2) + "\n")
        print(f"[zoo tune] trial {trial.number}: " + ", ".join(f"{k}={v}" for k, v in values.items()), flush=True)
        recorder = TrialRecorder(run_dir / "splits.json")
        pruning = PyTorchLightningPruningCallback(trial, self.monitor)
        try:
            with wandb_group(self.group):
                cli = run_cli(self.trial_args(values, run_dir), callbacks=[recorder, pruning])
        finally:
            recorder.write()
            trial.set_user_attr("epochs", recorder.validations)  # validation rounds, pruned trials included
        if cli.trainer.interrupted:
            raise KeyboardInterrupt(f"trial {trial.number} interrupted")
        score = cli.trainer.checkpoint_callback.best_model_score if cli.trainer.checkpoint_callback else None
        if score is None or not math.isfinite(float(score)):
            raise ValueError(f"trial {trial.number}: no finite validation value of {self.monitor} ({score})")
        return float(score)


# ----------------------------------------------------------------------------- outputs
def trial_rows(study: Any, params: list[Param]) -> list[dict[str, Any]]:
    rows = []
    for t in study.trials:
        values = json.loads(t.user_attrs.get("values", "{}"))
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
        row = {"trial": t.number, "state": t.state.name, "value": t.value,
               "epochs": t.user_attrs.get("epochs"), "seconds": None if seconds is None else round(seconds, 1)}
        row.update({p.key: values.get(p.key, t.params.get(p.key)) for p in params})
        row["run_dir"] = t.user_attrs.get("run_dir", "")
        rows.append(row)
    return rows


def write_tables(rows: list[dict[str, Any]], out: Path, monitor: str) -> None:
    from zoo.runfiles import atomic_write

    if not rows:
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write(out / "trials.csv", buf.getvalue())
    cols = [c for c in rows[0] if c != "run_dir"]
    fmt = lambda v: "" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))  # noqa: E731
    head = [("value (" + monitor + ")") if c == "value" else c for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    atomic_write(out / "trials.md", "\n".join(lines) + "\n")


def write_best_yaml(study_cfg: Study, best: Any, base_cfg: dict[str, Any], direction: str) -> Path:
    """``best.yaml``: the recipe resolved with the best trial's values (``run_dir`` cleared, the ``tune:``
    block kept so that the file can seed a further search).  It is what ``zoo fit --print_config`` prints."""
    from zoo.runfiles import atomic_write

    values = json.loads(best.user_attrs["values"])
    cfg = resolve_config(study_cfg.recipe, study_cfg.extra, values)
    cfg.pop("run_dir", None)
    cfg["test_after_fit"] = base_cfg.get("test_after_fit", True)
    head = [f"# zoo tune: best trial {best.number} of study in {study_cfg.out} ({direction} {study_cfg.monitor} = "
            f"{best.value:.6g} on the validation split), from {study_cfg.recipe}",
            *(f"#   {k}: {json.dumps(v)}" for k, v in values.items()),
            "# run it:  zoo fit --config best.yaml   (fully resolved; the tune: block is ignored by fit)"]
    path = study_cfg.out / "best.yaml"
    atomic_write(path, "\n".join(head) + "\n" + yaml.safe_dump(cfg, sort_keys=False))
    return path


def write_plots(study: Any, out: Path) -> list[str]:
    """Optimisation history and parameter importances as PNGs; each fails soft with a message."""
    notes = []
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances
    except Exception as e:  # noqa: BLE001 - plots are optional
        return [f"plots skipped: {e}"]
    import warnings

    for name, plot in (("history", plot_optimization_history), ("importances", plot_param_importances)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib backend experimental
                ax = plot(study)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.tight_layout()
            tmp = out / f".{name}.png.tmp"
            fig.savefig(tmp, dpi=120, format="png")
            os.replace(tmp, out / f"{name}.png")
            plt.close(fig)
        except Exception as e:  # noqa: BLE001 - e.g. importances need >= 2 completed trials that differ
            notes.append(f"{name}.png skipped: {type(e).__name__}: {e}")
    return notes


def mean_std(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, (math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else float("nan"))


def fit_and_test_best(best_yaml: Path, seeds: list[int], out: Path, wandb: str, group: str) -> Path:
    """Fit ``best.yaml`` once per seed (test after fit) into ``<out>/best/seed-S``; ``best_test.md`` holds
    mean ± sample std over the seeds.  A seed whose ``test_metrics.json`` exists is not run again."""
    from zoo.cli import run_cli
    from zoo.runfiles import atomic_write

    results = {}
    for s in seeds:
        run_dir = out / "best" / f"seed-{s}"
        metrics = run_dir / "test_metrics.json"
        if not metrics.is_file():
            with wandb_group(group + "-best"):
                run_cli(["fit", "--config", str(best_yaml), "--seed_everything", str(s), "--run_dir", str(run_dir),
                         "--test_after_fit", "true", "--overwrite", "true", "--wandb", wandb])  # replaces a killed fit
        results[s] = json.loads(metrics.read_text())["test"]
    keys = sorted(set.intersection(*(set(r) for r in results.values())))
    lines = [f"Best config ({best_yaml}) tested with seeds {', '.join(map(str, seeds))}: mean ± sample std "
             f"over {len(seeds)} seed(s).", "", "| metric | mean ± std | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "|---|---|" + "---|" * len(seeds)]
    for k in keys:
        m, sd = mean_std([results[s][k] for s in seeds])
        lines.append(f"| {k} | {m:.4f} ± {sd:.4f} | " + " | ".join(f"{results[s][k]:.4f}" for s in seeds) + " |")
    path = out / "best_test.md"
    atomic_write(path, "\n".join(lines) + "\n")
    return path


# ----------------------------------------------------------------------------- the study
def default_storage(out: Path) -> str:
    return f"sqlite:///{(out / 'study.db').resolve()}"


def open_storage(url: str) -> Any:
    """RDB storage with heartbeats: a trial whose process died (SIGKILL, lost machine) is marked FAIL by the
    next worker once its heartbeat is ``grace_period`` s stale, so resumed and parallel studies never wait on it."""
    import optuna

    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=30, grace_period=120)


def count_done(study: Any) -> int:
    return sum(t.state.name in DONE_STATES for t in study.get_trials(deepcopy=False))


def tune(recipe: Path, trials: int, *, space: Path | None = None, timeout: float | None = None,
         study_name: str | None = None, storage: str | None = None, out: Path | None = None,
         extra: list[str] | None = None, wandb: str = "offline", sampler_seed: int | None = None,
         pruner: str = "median", test_seeds: list[int] | None = None, group: str | None = None,
         log=print) -> dict[str, Any]:
    """Run (or resume, or join) a study until ``trials`` trials have finished; write the outputs.

    Returns ``summary.json``'s content: best value and values, ``best_yaml``, trial counts."""
    import optuna
    from optuna.trial import TrialState

    from zoo.runfiles import atomic_write

    quiet_warnings()
    recipe = Path(recipe)
    if trials < 1:
        raise TuneError(f"--trials must be >= 1, got {trials}")
    extra = list(extra or [])
    params, raw_space, source = read_space(recipe, space)
    base = check_space(params, recipe, extra, source)
    name = study_name or recipe.stem
    out = Path(out) if out else Path("runs") / "tune" / name
    out.mkdir(parents=True, exist_ok=True)
    monitor, mode = base.get("monitor") or "val/ndcg@10", base.get("monitor_mode") or "max"
    direction = "maximize" if mode == "max" else "minimize"
    sampler = optuna.samplers.TPESampler(seed=sampler_seed)
    prune = (optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1) if pruner == "median"
             else optuna.pruners.NopPruner())
    study = optuna.create_study(study_name=name, storage=open_storage(storage or default_storage(out)),
                                sampler=sampler, pruner=prune, direction=direction, load_if_exists=True)
    identity = {"recipe": recipe.name, "space": json.dumps(raw_space, sort_keys=True, default=str), "monitor": monitor}
    for k, v in identity.items():
        old = study.user_attrs.get(k)
        if old is None:
            study.set_user_attr(k, v)
        elif old != v:
            raise TuneError(f"study '{name}' in {storage or default_storage(out)} was started with another {k} "
                            f"({old} vs {v}); pick another --study name or --out folder")
    ctx = Study(recipe, extra, params, out, monitor, wandb, group or f"tune-{recipe.stem}")
    done = count_done(study)
    log(f"[zoo tune] study '{name}' ({direction} {monitor}): {done}/{trials} trials done; space: "
        + ", ".join(f"{p.key} in {p.describe()}" for p in params))
    if done < trials:
        stop = optuna.study.MaxTrialsCallback(trials, states=(TrialState.COMPLETE, TrialState.PRUNED))
        study.optimize(ctx.objective, n_trials=trials - done, timeout=timeout, callbacks=[stop],
                       catch=(Exception,), gc_after_trial=True)
    rows = trial_rows(study, params)
    write_tables(rows, out, monitor)
    notes = write_plots(study, out)
    for n in notes:
        log(f"[zoo tune] {n}")
    states = {s: sum(r["state"] == s for r in rows) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    summary: dict[str, Any] = {"study": name, "recipe": str(recipe), "monitor": monitor, "direction": direction,
                               "storage": storage or default_storage(out), "trials": states, "notes": notes}
    completed = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if completed:
        best = study.best_trial
        best_yaml = write_best_yaml(ctx, best, base, direction)
        summary.update(best_trial=best.number, best_value=best.value, best_values=json.loads(best.user_attrs["values"]),
                       best_yaml=str(best_yaml))
        log(f"[zoo tune] best trial {best.number}: {monitor} = {best.value:.4f} with "
            + ", ".join(f"{k}={v}" for k, v in summary["best_values"].items()) + f" -> {best_yaml}")
        if test_seeds:
            summary["best_test"] = str(fit_and_test_best(best_yaml, test_seeds, out, wandb, ctx.group))
            log(f"[zoo tune] tested the best config: {summary['best_test']}")
    atomic_write(out / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    log(f"[zoo tune] {states['COMPLETE']} complete, {states['PRUNED']} pruned, {states['FAIL']} failed; "
        f"tables: {out / 'trials.md'}")
    if not completed:
        raise TuneError(f"study '{name}': no trial completed (see {out / 'trials.md'} and the trial folders)")
    return summary


# ----------------------------------------------------------------------------- `zoo reproduce --tune-trials N`
# Models whose recipe names no grid (SASRec, GRU4Rec, ...) get this space, so that every row of a table is tuned
# with the same budget; keys the model lacks are dropped (Pop has none: it is reported untuned).
FALLBACK_SPACE = {"model.init_args.lr": {"log": [1.0e-4, 1.0e-2]}, "model.init_args.dropout": {"float": [0.0, 0.5]}}


def _fmt_mean_std(xs: list[float]) -> str:
    if not xs:
        return "—"
    m, sd = mean_std(xs)
    return f"{m:.4f} ± {sd:.4f}" if len(xs) > 1 else f"{m:.4f}"


def _cell_recipe(rec: dict[str, Any]) -> Path | None:
    """The materialised recipe of a reproduce run (or of the twin run it reused)."""
    run_dir = Path(rec["run_dir"])
    if (run_dir / "recipe.yaml").is_file():
        return run_dir / "recipe.yaml"
    meta = run_dir / "reproduce.json"
    twin = json.loads(meta.read_text()).get("twin_of") if meta.is_file() else None
    return Path(twin) / "recipe.yaml" if twin and (Path(twin) / "recipe.yaml").is_file() else None


def tune_table(records: list[dict[str, Any]], metrics: dict[str, str], out: Path, trials: int,
               timeout: float | None, seeds: list[int], wandb: str = "offline", log=print) -> list[dict[str, Any]]:
    """``zoo reproduce --tune-trials N``: tune every (dataset, model) row of a reproduced table with the same
    number of trials and the same timeout (its recipe's ``tune:`` block, else ``FALLBACK_SPACE``), fit the best
    config with the table's seeds, and write ``<out>/tuned.md`` / ``tuned.json``: untuned beside tuned rows.

    ``records`` are the reproduce rows (``dataset``, ``model``, ``seed``, ``status``, ``run_dir``, ``test/...``)."""
    from zoo.runfiles import atomic_write

    quiet_warnings()
    rows: list[dict[str, Any]] = []
    cells = list(dict.fromkeys((r["dataset"], r["model"]) for r in records))
    for ds, model in cells:
        recs = [r for r in records if r["dataset"] == ds and r["model"] == model]
        row: dict[str, Any] = {"dataset": ds, "model": model, "status": "", "trials": "", "values": {},
                               "untuned": {m: [float(r[f"test/{m}"]) for r in recs if r["status"] == "done"
                                               and f"test/{m}" in r] for m in metrics}, "tuned": {}}
        rows.append(row)
        recipe = next((p for p in map(_cell_recipe, (r for r in recs if r["status"] == "done")) if p), None)
        if recipe is None:
            row["status"] = "not tuned: the untuned run did not finish"
            continue
        name = re.sub(r"[^A-Za-z0-9+.-]+", "_", f"{ds}-{model}").strip("_")
        folder = out / "tuned" / name
        space = None
        if "tune" not in (load_yaml(recipe, "recipe") or {}):
            try:
                base = resolve_config(recipe, [], {})
            except TuneError as e:
                row["status"] = f"not tuned: {e}"
                continue
            keys = {}
            for k, v in FALLBACK_SPACE.items():
                with contextlib.suppress(KeyError):
                    get_dotted(base, k)
                    keys[k] = v
            if not keys:
                row["status"] = "not tuned: no hyper-parameter of the fallback space"
                continue
            folder.mkdir(parents=True, exist_ok=True)
            space = folder / "space.yaml"
            atomic_write(space, yaml.safe_dump({"tune": keys}, sort_keys=False))
        try:
            summary = tune(recipe, trials, space=space, timeout=timeout, study_name=name, out=folder, wandb=wandb,
                           test_seeds=seeds, group=f"tune-{name}", log=log)
        except Exception as e:  # noqa: BLE001 - one row's failure is reported, the table goes on
            row["status"] = f"failed: {type(e).__name__}: {e}"
            log(f"[zoo tune] {ds}/{model}: {row['status']}")
            continue
        n = summary["trials"]
        row.update(status="tuned", trials=f"{n['COMPLETE']}+{n['PRUNED']}p+{n['FAIL']}f", values=summary["best_values"])
        tested = [json.loads((folder / "best" / f"seed-{s}" / "test_metrics.json").read_text())["test"] for s in seeds]
        row["tuned"] = {m: [t[f"test/{m}"] for t in tested if f"test/{m}" in t] for m in metrics}
    lines = [f"Tuned beside untuned: every row tuned with {trials} trials"
             + (f" and a {timeout:g} s timeout per study (time-capped)" if timeout else "")
             + " on the validation split (Optuna TPE, median pruning), then its best config fitted and tested with "
             f"seeds {', '.join(map(str, seeds))}; mean ± sample std over seeds. Trials: complete+pruned+failed.", ""]
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        lines += [f"### {ds}", "", "| model | " + " | ".join(f"{lab} untuned | {lab} tuned" for lab in metrics.values())
                  + " | trials | tuned values |", "|---|" + "---|---|" * len(metrics) + "---|---|"]
        for r in (r for r in rows if r["dataset"] == ds):
            cells = [f"{_fmt_mean_std(r['untuned'][m])} | {_fmt_mean_std(r['tuned'].get(m, []))}" for m in metrics]
            vals = ", ".join(f"{k.rsplit('.', 1)[-1]}={v:.3g}" if isinstance(v, float) else f"{k.rsplit('.', 1)[-1]}={v}"
                             for k, v in r["values"].items()) or r["status"]
            lines.append(f"| {r['model']} | " + " | ".join(cells) + f" | {r['trials']} | {vals} |")
        lines.append("")
    atomic_write(out / "tuned.md", "\n".join(lines))
    atomic_write(out / "tuned.json", json.dumps(rows, indent=2, default=str) + "\n")
    log(f"[zoo tune] wrote {out / 'tuned.md'}")
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zoo tune", description=__doc__.split("\n\n")[0],
                                epilog="Arguments after `--` are passed to every trial's `zoo fit` (e.g. "
                                       "-- --trainer.max_epochs 20). See docs/tune.md.")
    p.add_argument("--config", required=True, type=Path, help="the recipe to tune")
    p.add_argument("--space", type=Path, default=None, help="search-space YAML (replaces the recipe's tune: block)")
    p.add_argument("--trials", type=int, required=True, help="finished (complete or pruned) trials the study reaches")
    p.add_argument("--timeout", type=float, default=None, help="seconds after which this worker starts no new trial")
    p.add_argument("--study", default=None, help="study name (default: the recipe's file name)")
    p.add_argument("--storage", default=None, help="Optuna RDB URL shared by workers (default sqlite:///<out>/study.db)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/tune/<study>)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds for --test-best (default: the recipe's)")
    p.add_argument("--test-best", action="store_true", help="fit the best config with --seeds and test it")
    p.add_argument("--wandb", default="offline", choices=("off", "offline", "online"),
                   help="W&B for every trial, group tune-<recipe> (WANDB_MODE overrides offline/online)")
    p.add_argument("--sampler-seed", type=int, default=None, help="seed of the TPE sampler")
    p.add_argument("--pruner", default="median", choices=("median", "none"), help="Optuna pruner")
    return p


def main(argv: list[str]) -> int:
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    args = build_parser().parse_args(argv)
    try:
        seeds = None
        if args.test_best:
            seeds = args.seeds
            if seeds is None:
                seed = (load_yaml(args.config, "recipe") or {}).get("seed_everything")
                seeds = [int(seed) if isinstance(seed, int) and not isinstance(seed, bool) else 0]
        tune(args.config, args.trials, space=args.space, timeout=args.timeout, study_name=args.study,
             storage=args.storage, out=args.out, extra=extra, wandb=args.wandb, sampler_seed=args.sampler_seed,
             pruner=args.pruner, test_seeds=seeds)
    except TuneError as e:
        if os.environ.get("ZOO_DEBUG"):
            raise
        print(f"zoo tune: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
