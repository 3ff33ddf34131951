"""``zoo compare``: every metric of several runs with a 95% bootstrap CI over users, and a paired
sign-flip test of each model against a reference, Holm-corrected across the table.

    zoo compare runs/sasrec runs/horae-s0 runs/horae-s1 runs/horae-s2
    zoo compare runs/reproduce/horae/ML/* --reference runs/reproduce/horae/ML/SASRec-s0 --metrics ndcg@10 hr@10

Each RUN_DIR holds a test's metrics (``test_metrics.json``, else the newest ``test-<stamp>.json``)
and its per-user ranks (:mod:`zoo.ranks`).  Runs whose saved configs differ only in the seed
(``seed_everything``, ``data.seed``, ``-s<seed>`` in paths, the run folder) and whose folder names
differ only in a ``-s<seed>`` suffix are one model with several seeds.

Statistics (docs/compare.md explains how to read them):

* a model's value = mean over its seeds of the mean over test users;
* CI: percentile bootstrap over users, ``n_boot`` resamples of the test users, the SAME resampled
  users in every seed and every model (the users are the same; their results across seeds are
  correlated), the metric averaged over seeds within a resample.  Seed-to-seed spread (std and
  range of the per-seed values) is reported beside it and is not part of the CI;
* Δ vs the reference: the same bootstrap on the per-user differences (paired), with its CI;
* p-value: two-sided paired sign-flip permutation test on the per-user differences (each user's
  seed-averaged metric of the model minus the reference's); statistic = mean difference; exact
  over all 2^U sign vectors when 2^U <= ``n_boot``, else ``n_boot`` random sign vectors (the
  p-value then counts the observed one, as scipy.stats.permutation_test does);
* Holm's step-down correction over every (model, metric) test of the table; "significant" =
  Holm-adjusted p < ``alpha``.
"""

from __future__ import annotations

import argparse
import copy
import csv
import functools
import hashlib
import io
import json
import math
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zoo.runfiles import atomic_write
from zoo.ranks import Ranks, load_ranks, parse_metric, per_user

PAPER_MODULES = ("horae", "miracle", "timirec", "hpcl4sr", "hm4sr")  # zoo.models.<module>: the papers' models
SEED_SUFFIX = re.compile(r"[-_](?:s|seed)\d+$")
# config keys that are not the model/config itself: seeds, where the run went, how it was launched
# run management, not the model or its training: never splits seeds (a mid-epoch last.ckpt every N
# steps changes neither the random stream nor the updates)
NOT_CONFIG = ("seed_everything", "run_dir", "ckpt_path", "config", "wandb", "test_after_fit", "print_config", "weights_only",
              "overwrite", "last_every_n_steps", "cpu_allocator")
# `zoo fit` options added after runs were saved without them: such a run behaved as the option's
# default, so a run AT that default is compared as if the key were absent (as drop_defaults does for
# class arguments).  zoo/cli.py's parser defaults must equal these (tests/test_cli.py checks).
LATER_RUN_OPTIONS: dict[str, Any] = {"compile": "off", "compile_backend": "inductor", "compile_scope": "modules",
                                     "matmul_precision": "highest"}


@functools.lru_cache(maxsize=None)
def import_class(class_path: str) -> Any | None:
    """The class a dotted ``module.Name`` path names (a recipe's ``class_path``); None when it does not import."""
    import importlib

    try:
        module, _, name = class_path.rpartition(".")
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def class_arguments(class_path: str) -> dict[str, Any] | None:
    """``{argument: default}`` of every keyword argument a class takes (``inspect.Parameter.empty``
    where it has no default): its ``__init__``'s and, through ``**kwargs``, its bases' (a model's
    ``SequentialRecommender`` ``lr``, ``topk``, ...; the most derived default wins).  None when the
    class does not import."""
    import inspect

    cls = import_class(class_path)
    if cls is None:
        return None
    out: dict[str, Any] = {}
    for klass in getattr(cls, "__mro__", ()):
        if "__init__" not in vars(klass):
            continue
        try:
            params = list(inspect.signature(klass.__init__).parameters.values())
        except (ValueError, TypeError):
            break
        for p in params:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self":
                out.setdefault(p.name, p.default)
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return out


def _signature_defaults(class_path: str) -> dict[str, Any]:
    """``{argument: default}`` of a config's ``class_path``, bases included (empty when it does not import)."""
    import inspect

    return {k: v for k, v in (class_arguments(class_path) or {}).items() if v is not inspect.Parameter.empty}


def drop_defaults(node: Any) -> Any:
    """The config without the ``init_args`` that equal their class's current default, so a run
    saved before an argument existed (which then behaved as its default) and one saved after
    compare equal; an argument whose default changed keeps the old run's value and still differs."""
    if isinstance(node, list):
        return [drop_defaults(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: drop_defaults(v) for k, v in node.items()}
    if isinstance(out.get("class_path"), str) and isinstance(out.get("init_args"), dict):
        defaults = _signature_defaults(out["class_path"])
        out["init_args"] = {k: v for k, v in out["init_args"].items()
                            if not (k in defaults and _same(v, defaults[k]))}
    return out


def _same(value: Any, default: Any) -> bool:
    """A saved config value equals a signature default (tuples are saved as lists; a bool only
    equals the same bool, not 0 or 1)."""
    if isinstance(default, tuple):
        default = list(default)
    if isinstance(value, bool) or isinstance(default, bool):
        return value is default
    try:
        return bool(value == default)
    except Exception:  # noqa: BLE001 - an exotic default never matches
        return False


# ----------------------------------------------------------------------------- statistics
def bootstrap_means(X: np.ndarray, n_boot: int, rng: np.random.Generator, batch: int | None = None) -> np.ndarray:
    """``[n_boot, M]`` column means of ``X [U, M]`` over users resampled with replacement.

    The resamples are ``rng.integers(0, U, (batch, U))`` drawn batch after batch, the draws of
    ``scipy.stats.bootstrap(..., batch=batch)``, so with the same generator both give the same
    bootstrap distribution.  ``batch`` defaults to about 4M indices per draw.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    U = X.shape[0]
    if U == 0:
        raise ValueError("bootstrap over zero users")
    batch = batch or max(1, min(n_boot, (1 << 22) // U))
    out = np.empty((n_boot, X.shape[1]))
    for b0 in range(0, n_boot, batch):
        b = min(batch, n_boot - b0)
        idx = rng.integers(0, U, (b, U))  # [b, U]
        counts = np.bincount((idx + U * np.arange(b)[:, None]).ravel(), minlength=b * U).reshape(b, U)
        out[b0 : b0 + b] = counts @ X / U
    return out


def percentile_ci(theta: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of a bootstrap distribution ``[n_boot, ...]`` (linear interpolation)."""
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(theta, [alpha, 1.0 - alpha], axis=0)
    return lo, hi


def sign_flip_test(D: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Two-sided paired permutation (sign-flip) test of mean(D) = 0, one p-value per column of
    ``D [U, M]`` (per-user differences).  Exact over all ``2^U`` sign vectors when that is at
    most ``n_resamples``; otherwise ``n_resamples`` random ones plus the observed
    (p = (count + 1) / (n + 1)).  p = min(1, 2 min(P[T* >= T], P[T* <= T])), ties within a
    relative 100 eps counted as equal: the definitions of ``scipy.stats.permutation_test``."""
    D = np.asarray(D, dtype=np.float64)
    if D.ndim == 1:
        D = D[:, None]
    U = D.shape[0]
    observed = D.mean(0)  # [M]
    gamma = np.abs(100 * np.finfo(np.float64).eps * observed)
    ge = np.zeros(D.shape[1])
    le = np.zeros(D.shape[1])
    exact = U < 63 and 2**U <= n_resamples
    if exact:
        n, adjustment = 2**U, 0
        codes = np.arange(n, dtype=np.int64)
        batches = [1 - 2 * ((codes[:, None] >> np.arange(U)) & 1)]  # [2^U, U] every sign vector
    else:
        n, adjustment = n_resamples, 1
        batch = max(1, min(n, (1 << 22) // max(U, 1)))
        batches = (1.0 - 2.0 * rng.integers(0, 2, (min(batch, n - b0), U)) for b0 in range(0, n, batch))
    for signs in batches:
        null = signs @ D / U  # [b, M]
        ge += (null >= observed - gamma).sum(0)
        le += (null <= observed + gamma).sum(0)
    p_greater = (ge + adjustment) / (n + adjustment)
    p_less = (le + adjustment) / (n + adjustment)
    return np.minimum(1.0, 2 * np.minimum(p_greater, p_less))


def holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN entries are left out and stay NaN)."""
    p = np.asarray(p, dtype=np.float64)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out[order] = adj
    return out


# ----------------------------------------------------------------------------- runs
@dataclass
class Run:
    """One tested run folder: its metrics file, config and per-user ranks."""

    path: Path
    metrics_file: Path
    metrics: dict[str, float]  # "ndcg@10" -> value, as the test logged it
    config: dict[str, Any]
    ranks: Ranks
    epochs: int | None = None

    @property
    def seed(self) -> Any:
        return self.config.get("seed_everything")

    @property
    def class_path(self) -> str:
        return str((self.config.get("model") or {}).get("class_path", ""))

    @property
    def model_name(self) -> str:
        return self.class_path.rsplit(".", 1)[-1] or "model"

    @property
    def is_paper_model(self) -> bool:
        parts = self.class_path.split(".")
        return len(parts) >= 2 and parts[-2] in PAPER_MODULES

    def model_config(self) -> dict[str, Any]:
        """The config without its seeds, run locations and arguments at their class's default."""
        cfg = copy.deepcopy(self.config)
        for k in NOT_CONFIG:
            cfg.pop(k, None)
        for k, default in LATER_RUN_OPTIONS.items():
            if k in cfg and cfg[k] == default:
                cfg.pop(k)
        data_args = (cfg.get("data") or {}).get("init_args") or {}
        data_args.pop("seed", None)
        trainer = cfg.get("trainer") or {}
        for k in ("logger", "callbacks", "default_root_dir"):
            trainer.pop(k, None)
        for k, spellings in TRAINER_DEFAULTS.items():  # unset and the Trainer's default are one config
            if k in trainer and trainer[k] in spellings:
                trainer[k] = spellings[0]  # one spelling: equal group keys, and labels name the value
        return drop_defaults(cfg)

    def group_key(self) -> str:
        """The model config (:meth:`model_config`), plus the folder name without a seed suffix."""
        text = json.dumps(self.model_config(), sort_keys=True, default=str)
        if self.seed is not None:
            text = re.sub(rf"([-_])s(eed)?{re.escape(str(self.seed))}(?!\d)", r"\1s<seed>", text)
        return SEED_SUFFIX.sub("", self.path.name) + "|" + hashlib.sha1(text.encode()).hexdigest()[:10]


def find_metrics_file(run_dir: Path) -> Path:
    """``test_metrics.json`` of a fit, else the newest ``test-<stamp>.json`` of a ``zoo test``."""
    if run_dir.is_file():
        return run_dir
    if not run_dir.is_dir():
        raise FileNotFoundError(f"'{run_dir}': no such run folder")
    if (run_dir / "test_metrics.json").is_file():
        return run_dir / "test_metrics.json"
    stamped = sorted(run_dir.glob("test-*.json"))
    if stamped:
        return stamped[-1]
    raise FileNotFoundError(f"'{run_dir}': no test_metrics.json or test-<stamp>.json (run `zoo fit` with "
                            "test_after_fit, or `zoo test`, first)")


def load_run(path: str | Path) -> Run:
    """Read a run folder (or one of its metrics files) and its ranks; clear errors when incomplete."""
    from zoo.runfiles import ranks_path_for

    metrics_file = find_metrics_file(Path(path))
    try:
        blob = json.loads(metrics_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"'{metrics_file}' is not a readable metrics file ({e})") from e
    test = blob.get("test") if isinstance(blob, dict) else None
    if not isinstance(test, dict):
        raise ValueError(f"'{metrics_file}': expected a 'test' section with the test metrics")
    ranks_file = ranks_path_for(metrics_file)
    if not ranks_file.is_file():
        raise FileNotFoundError(f"'{ranks_file}' is missing: the run was tested before per-user ranks were "
                                f"written; run `zoo test --run {metrics_file.parent}` to produce them")
    metrics = {k.removeprefix("test/"): float(v) for k, v in test.items()}
    run_dir = metrics_file.parent
    return Run(run_dir, metrics_file, metrics, blob.get("config") or {}, load_ranks(ranks_file), blob.get("epochs"))


@dataclass
class Model:
    """One row of the table: the runs of one model/config (one per seed)."""

    label: str
    runs: list[Run]

    @property
    def seeds(self) -> list[Any]:
        return [r.seed for r in self.runs]

    @property
    def is_paper_model(self) -> bool:
        return self.runs[0].is_paper_model

    def caps(self) -> list[str]:
        """Why the numbers may not be converged: the epoch cap reached, a time limit, partial epochs."""
        notes = set()
        for r in self.runs:
            t = r.config.get("trainer") or {}
            cap = t.get("max_epochs")
            if r.epochs is not None and isinstance(cap, int) and cap > 0 and r.epochs >= cap:  # 0: nothing to train (Pop)
                notes.add(f"ran to max_epochs={t['max_epochs']} (not early-stopped)")
            if t.get("max_time"):
                notes.add(f"time limit max_time={t['max_time']}")
            if t.get("limit_train_batches") not in (None, 1.0):
                notes.add(f"limit_train_batches={t['limit_train_batches']}")
        return sorted(notes)


#: Lightning ``Trainer`` arguments whose unset value (``null`` in a saved config) means their
#: default, with the spellings of that default (the first is the one shown): a run that leaves it
#: unset and one that names it are one model
TRAINER_DEFAULTS: dict[str, tuple[Any, ...]] = {"precision": ("32-true", None, "32", 32)}


def group_runs(runs: list[Run]) -> list[Model]:
    """Runs -> models (several seeds of one config form one model), in first-seen order, with
    labels made unique (the parent folder is added where two models share a folder name)."""
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.group_key(), []).append(r)
    models = [Model(SEED_SUFFIX.sub("", rs[0].path.name) or rs[0].model_name, rs) for rs in groups.values()]
    for label in {m.label for m in models}:
        same = [m for m in models if m.label == label]
        if len(same) > 1:
            for m, tag in zip(same, config_tags([m.runs[0] for m in same])):
                m.label = f"{label} ({tag})" if tag else label
    labels = [m.label for m in models]
    for m in models:
        if labels.count(m.label) > 1:
            m.label = f"{m.runs[0].path.parent.name}/{m.label}"
    labels = [m.label for m in models]
    for i, m in enumerate(models):
        if labels.count(m.label) > 1:
            m.label = f"{m.label}#{i + 1}"
    return models


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"model.init_args.loss": "bpr", ...}``: a config's leaves by dotted path."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def config_tags(runs: list[Run], most: int = 3) -> list[str]:
    """Per run, the settings that tell its config from the others' (``loss=bpr``), for labels of
    models whose folders share a name; an argument a config leaves at its default shows it."""
    flats = [_flat(r.model_config()) for r in runs]
    keys = sorted({k for f in flats for k in f if len({json.dumps(g.get(k, "\0"), default=str) for g in flats}) > 1})

    def value(f: dict[str, Any], key: str) -> str:
        if key in f:
            v = f[key]
        else:  # dropped as its class's default (drop_defaults), or absent from this config
            section, _, name = key.rpartition(".init_args.")
            v = _signature_defaults(str(f.get(f"{section}.class_path", ""))).get(name, "—") if section else "—"
        text = v if isinstance(v, str) else json.dumps(v, default=str)
        return text if len(text) <= 24 else "…" + text[-23:]

    tags = []
    for f in flats:
        parts = [f"{k.rsplit('.', 1)[-1]}={value(f, k)}" for k in keys[:most]]
        tags.append(", ".join(parts) + (f", +{len(keys) - most} more" if len(keys) > most else ""))
    return tags


def check_same_users(runs: list[Run]) -> np.ndarray:
    """The common test users (sorted ids); a clear error naming the runs when they differ."""
    first = runs[0]
    users = np.sort(first.ranks.user_id)
    for r in runs[1:]:
        if r.ranks.protocol != first.ranks.protocol or r.ranks.n_candidates != first.ranks.n_candidates:
            raise ValueError(
                f"runs '{first.path}' and '{r.path}' were tested under different protocols "
                f"({first.ranks.protocol}, {first.ranks.n_candidates} candidates vs {r.ranks.protocol}, "
                f"{r.ranks.n_candidates}); compare runs of the same data, split and evaluation")
        other = np.sort(r.ranks.user_id)
        if not np.array_equal(users, other):
            only_a = np.setdiff1d(users, other)
            only_b = np.setdiff1d(other, users)
            raise ValueError(
                f"runs '{first.path}' ({len(users)} test users) and '{r.path}' ({len(other)}) were not tested "
                f"on the same users ({len(only_a)} only in the first, e.g. {list(only_a[:3])}; {len(only_b)} only "
                f"in the second, e.g. {list(only_b[:3])}); compare runs of the same data and split")
    return users


def alignment(run: Run, users: np.ndarray) -> np.ndarray:
    """Indices ``i`` with ``run.ranks.user_id[i] == users`` (``users`` sorted, the same set)."""
    order = np.argsort(run.ranks.user_id)
    return order[np.searchsorted(run.ranks.user_id[order], users)]


def default_metrics(runs: list[Run]) -> list[str]:
    """Every metric all runs can recompute (recall@K is dropped where it equals hr@K)."""
    names = [n for n in runs[0].ranks.metric_names()
             if not (runs[0].ranks.protocol != "multi" and n.startswith("recall@"))]
    common = set.intersection(*(set(r.ranks.metric_names()) for r in runs))
    return [n for n in names if n in common]


# ----------------------------------------------------------------------------- the table
@dataclass
class Row:
    """One (model, metric) cell with its CI, seed spread and paired test against the reference."""

    model: str
    metric: str
    n_seeds: int
    n_users: int
    mean: float
    ci_low: float
    ci_high: float
    seed_std: float  # NaN with one seed
    seed_min: float
    seed_max: float
    is_reference: bool
    delta: float = math.nan  # model - reference
    delta_low: float = math.nan
    delta_high: float = math.nan
    p_value: float = math.nan
    p_holm: float = math.nan
    significant: bool | None = None
    seeds: str = ""
    runs: str = ""


@dataclass
class Table:
    """What :func:`compare_runs` returns: one row per (model, metric) and how it was computed."""

    rows: list[Row]
    models: list[Model]
    metrics: list[str]
    reference: str
    reference_reason: str
    n_users: int
    protocol: str
    n_boot: int
    seed: int
    level: float
    alpha: float
    notes: list[str] = field(default_factory=list)

    def row(self, model: str, metric: str) -> Row:
        for r in self.rows:
            if r.model == model and r.metric == metric:
                return r
        raise KeyError(f"no row for model {model!r}, metric {metric!r}")

    # -------------------------------------------------------------- output
    def cell(self, model: str, metric: str) -> str:
        r = self.row(model, metric)
        return f"{r.mean:.4f} [{r.ci_low:.4f}, {r.ci_high:.4f}]"

    def to_markdown(self) -> str:
        pct = f"{self.level:.0%}"
        out = io.StringIO()
        out.write(f"{len(self.models)} models on the same {self.n_users} test users ({self.protocol} ranking). "
                  f"Cell: mean over test users (averaged over seeds) [{pct} percentile bootstrap CI over users, "
                  f"{self.n_boot} resamples]. Seeds: per-model count; `±` = std of the per-seed values.\n\n")
        out.write("| model | seeds | " + " | ".join(self.metrics) + " |\n")
        out.write("|---|---|" + "---|" * len(self.metrics) + "\n")
        for m in self.models:
            cells = []
            for metric in self.metrics:
                r = self.row(m.label, metric)
                spread = f" ± {r.seed_std:.4f}" if r.n_seeds > 1 else ""
                cells.append(f"{r.mean:.4f} [{r.ci_low:.4f}, {r.ci_high:.4f}]{spread}")
            seeds = f"{len(m.runs)}" if len(m.runs) > 1 else "1 (single seed)"
            name = f"**{m.label}** (reference)" if m.label == self.reference else m.label
            out.write(f"| {name} | {seeds} | " + " | ".join(cells) + " |\n")
        if len(self.models) == 1:
            return out.getvalue() + "".join(f"\n- {n}" for n in self.notes) + ("\n" if self.notes else "")
        out.write("\n" + self.paired_markdown())
        if self.notes:
            out.write("\nNotes:\n\n" + "".join(f"- {n}\n" for n in self.notes))
        return out.getvalue()

    def paired_markdown(self) -> str:
        """The paired-test block: every model's Δ to the reference with its paired CI, p and p_Holm."""
        pct = f"{self.level:.0%}"
        out = io.StringIO()
        out.write(f"Paired test against **{self.reference}** ({self.reference_reason}): Δ = model − reference "
                  f"[{pct} paired bootstrap CI]; p = two-sided sign-flip permutation test over users; "
                  f"p_Holm = Holm-corrected over all {sum(1 for r in self.rows if not math.isnan(r.p_value))} tests "
                  f"of this table; * = p_Holm < {self.alpha}.\n\n")
        out.write("| model | " + " | ".join(self.metrics) + " |\n")
        out.write("|---|" + "---|" * len(self.metrics) + "\n")
        for m in self.models:
            if m.label == self.reference:
                continue
            cells = []
            for metric in self.metrics:
                r = self.row(m.label, metric)
                star = "*" if r.significant else ""
                cells.append(f"{r.delta:+.4f} [{r.delta_low:+.4f}, {r.delta_high:+.4f}] "
                             f"p={_fmt_p(r.p_value)} p_Holm={_fmt_p(r.p_holm)}{star}")
            out.write(f"| {m.label} | " + " | ".join(cells) + " |\n")
        return out.getvalue()

    def relabel(self, names: dict[str, str]) -> None:
        """Rename models (``{label: new label}``; labels not named stay), e.g. to a results table's row names."""
        for m in self.models:
            m.label = names.get(m.label, m.label)
        for r in self.rows:
            r.model = names.get(r.model, r.model)
        self.reference = names.get(self.reference, self.reference)
        self.notes = [next((names[k] + n[len(k):] for k in names if n.startswith(f"{k}: ")), n) for n in self.notes]

    def records(self) -> list[dict[str, Any]]:
        """The rows as plain dicts (for JSON)."""
        return [asdict(r) for r in self.rows]

    def to_csv(self) -> str:
        out = io.StringIO()
        names = list(Row.__dataclass_fields__)
        w = csv.writer(out)
        w.writerow(names)
        for r in self.rows:
            w.writerow([_csv_value(getattr(r, n)) for n in names])
        return out.getvalue()


def _fmt_p(p: float) -> str:
    if math.isnan(p):
        return "—"
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"


def _csv_value(v: Any) -> Any:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return "" if v is None else v


def pick_reference(models: list[Model], primary: str, means: dict[str, float]) -> tuple[str, str]:
    """The best non-paper model (a baseline) on ``primary``; the first model when all are papers'."""
    baselines = [m for m in models if not m.is_paper_model]
    if not baselines:
        return models[0].label, "the first run given: no baseline among the runs"
    best = max(baselines, key=lambda m: means[m.label])
    return best.label, f"the best baseline on {primary}"


def compare_runs(
    run_dirs: list[str | Path],
    reference: str | Path | None = None,
    metrics: list[str] | None = None,
    n_boot: int = 10000,
    seed: int = 0,
    level: float = 0.95,
    alpha: float = 0.05,
    primary: str | None = None,
) -> Table:
    """Compare tested runs over their (identical) test users: see the module docstring.

    Args:
        run_dirs: run folders (or their metrics files); seeds of one config become one model.
        reference: the run folder (or model label) every model is tested against; default the
            best non-paper model on ``primary``, else the first run.
        metrics: e.g. ``["ndcg@10", "hr@10"]`` (default: every metric the runs logged).
        n_boot: bootstrap resamples, and random sign vectors of the permutation test.
        seed: seed of both.  level: CI level.  alpha: significance level after Holm.
        primary: metric that picks the default reference (default: the runs' monitored metric).
    """
    if not run_dirs:
        raise ValueError("zoo compare: give at least one run folder")
    runs = [load_run(p) for p in run_dirs]
    users = check_same_users(runs)
    models = group_runs(runs)
    metrics = [f"{n}@{k}" for n, k in map(parse_metric, metrics)] if metrics else default_metrics(runs)
    if not metrics:
        raise ValueError("zoo compare: the runs share no metric")
    for m in metrics:  # any K works (the ranks are kept); an unknown name stops here with the choices
        per_user(runs[0].ranks, m)
    if primary is None:
        monitor = str(runs[0].config.get("monitor") or "").removeprefix("val/")
        primary = monitor if monitor in metrics else metrics[0]
    elif primary not in metrics:
        raise ValueError(f"--primary {primary!r} is not among the compared metrics {metrics}")

    notes: list[str] = []
    # per-user values, seed-averaged: V [U, models * metrics]; per-seed means for the spread
    U, G, M = len(users), len(models), len(metrics)
    V = np.zeros((U, G * M))
    per_seed: dict[tuple[str, str], list[float]] = {}
    for g, m in enumerate(models):
        where = [alignment(r, users) for r in m.runs]
        for j, metric in enumerate(metrics):
            vals = [per_user(r.ranks, metric)[w] for r, w in zip(m.runs, where)]
            V[:, g * M + j] = np.mean(vals, axis=0)
            per_seed[m.label, metric] = [float(v.mean()) for v in vals]
            for r, v in zip(m.runs, vals):
                logged = r.metrics.get(metric)
                if logged is not None and abs(logged - v.mean()) > 1e-5:
                    notes.append(f"{r.metrics_file}: {metric} is {logged:.6f} but its ranks give {v.mean():.6f} "
                                 "(ranks file from another test?)")
        for note in m.caps():
            notes.append(f"{m.label}: {note}")
    means = V.mean(0)

    if reference is None:
        ref_label, reason = pick_reference(models, primary, {m.label: means[g * M + metrics.index(primary)]
                                                             for g, m in enumerate(models)})
    else:
        ref_label, reason = _find_model(models, reference), "given with --reference"
    ref = [m.label for m in models].index(ref_label)

    rng = np.random.default_rng(seed)
    boot = bootstrap_means(V, n_boot, rng)  # [n_boot, G*M]
    lo, hi = percentile_ci(boot, level)
    ref_cols = ref * M + np.arange(M)
    D = V - np.tile(V[:, ref_cols], G)  # [U, G*M] per-user differences to the reference
    dboot = boot - np.tile(boot[:, ref_cols], G)
    dlo, dhi = percentile_ci(dboot, level)
    tested = np.array([g != ref for g in range(G) for _ in range(M)])
    p = np.full(G * M, np.nan)
    if tested.any():
        p[tested] = sign_flip_test(D[:, tested], n_boot, rng)
    p_holm = holm(p)

    rows = []
    for g, m in enumerate(models):
        for j, metric in enumerate(metrics):
            c = g * M + j
            ps = per_seed[m.label, metric]
            rows.append(Row(
                model=m.label, metric=metric, n_seeds=len(m.runs), n_users=U, mean=float(means[c]),
                ci_low=float(lo[c]), ci_high=float(hi[c]),
                seed_std=float(np.std(ps, ddof=1)) if len(ps) > 1 else math.nan,
                seed_min=min(ps), seed_max=max(ps), is_reference=g == ref,
                delta=float(means[c] - means[ref_cols[j]]) if g != ref else math.nan,
                delta_low=float(dlo[c]) if g != ref else math.nan, delta_high=float(dhi[c]) if g != ref else math.nan,
                p_value=float(p[c]), p_holm=float(p_holm[c]),
                significant=bool(p_holm[c] < alpha) if g != ref else None,
                seeds=" ".join(str(s) for s in m.seeds), runs=" ".join(str(r.path) for r in m.runs),
            ))
    return Table(rows, models, metrics, ref_label, reason, U, runs[0].ranks.protocol, n_boot, seed, level, alpha,
                 list(dict.fromkeys(notes)))


def _find_model(models: list[Model], reference: str | Path) -> str:
    """The model a ``--reference`` names: a run folder of it (or its metrics file), or its label."""
    text = str(reference)
    for m in models:
        if text == m.label:
            return m.label
    target = Path(reference).resolve()
    for m in models:
        for r in m.runs:
            if target in (r.path.resolve(), r.metrics_file.resolve()):
                return m.label
    raise ValueError(f"--reference {text!r} is none of the compared runs ({', '.join(m.label for m in models)}); "
                     "give one of the RUN_DIRs (or add it to them)")


# ----------------------------------------------------------------------------- writing
def plot_table(table: Table) -> bytes:
    """PNG: one panel per metric, each model's mean with its CI as an error bar."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    n = len(table.metrics)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    labels = [m.label for m in table.models]
    fig = Figure(figsize=(4.2 * cols, 0.5 + (0.35 * len(labels) + 1.0) * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, metric in zip(axes.ravel(), table.metrics):
        rs = [table.row(lab, metric) for lab in labels]
        y = np.arange(len(rs))[::-1]
        mean = np.array([r.mean for r in rs])
        err = np.array([[r.mean - r.ci_low for r in rs], [r.ci_high - r.mean for r in rs]])
        colors = ["tab:orange" if r.is_reference else ("tab:blue" if not r.significant else "tab:green") for r in rs]
        for i, color in enumerate(colors):
            ax.errorbar(mean[i], y[i], xerr=err[:, i : i + 1], fmt="o", color=color, ecolor=color, capsize=3, ms=4)
        ax.set_yticks(y, [f"{lab}{'*' if r.significant else ''}" for lab, r in zip(labels, rs)], fontsize=8)
        ax.set_title(metric, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.suptitle(f"{table.level:.0%} bootstrap CI over {table.n_users} users; orange = reference "
                 f"({table.reference}), * = differs after Holm", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)  # the Agg canvas
    return buf.getvalue()


def write_table(table: Table, out: str | Path, figure: bool = True) -> dict[str, Path]:
    """``compare.md``, ``compare.csv`` and ``compare.png`` in ``out`` (each written atomically)."""
    out = Path(out)
    paths = {"markdown": out / "compare.md", "csv": out / "compare.csv"}
    atomic_write(paths["markdown"], table.to_markdown().encode("utf-8"))
    atomic_write(paths["csv"], table.to_csv().encode("utf-8"))
    if figure:
        paths["figure"] = out / "compare.png"
        atomic_write(paths["figure"], plot_table(table))
    return paths


def default_out(table: Table) -> Path:
    """``runs/compare/<model>-vs-<model>...`` (shortened with a hash when long)."""
    name = "-vs-".join(re.sub(r"[^A-Za-z0-9+.=-]+", "_", m.label) for m in table.models)
    if len(name) > 80:
        name = name[:64] + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return Path("runs") / "compare" / name


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="zoo compare",
        description="Every metric of tested runs with a bootstrap CI over users (and seeds), and a paired "
                    "sign-flip test of each model against a reference, Holm-corrected (docs/compare.md).")
    ap.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders holding test_metrics.json + ranks.npz")
    ap.add_argument("--reference", default=None, help="run folder (or model label) to test against "
                                                      "(default: the best baseline, else the first run)")
    ap.add_argument("--metrics", nargs="+", default=None, help="e.g. ndcg@10 hr@10 (default: every metric)")
    ap.add_argument("--primary", default=None, help="metric that picks the default reference (default: the monitor)")
    ap.add_argument("--out", default=None, help="output folder (default runs/compare/<names>)")
    ap.add_argument("--n-boot", type=int, default=10000, help="bootstrap resamples and random sign flips")
    ap.add_argument("--seed", type=int, default=0, help="seed of the resampling")
    ap.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals")
    ap.add_argument("--alpha", type=float, default=0.05, help="significance level after Holm's correction")
    ap.add_argument("--no-figure", action="store_true", help="skip the PNG")
    args = ap.parse_args(argv)
    if args.n_boot < 1 or not 0 < args.level < 1:
        ap.error("--n-boot must be >= 1 and --level in (0, 1)")
    try:
        table = compare_runs(args.runs, args.reference, args.metrics, args.n_boot, args.seed, args.level,
                             args.alpha, args.primary)
        paths = write_table(table, args.out or default_out(table), figure=not args.no_figure)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"zoo compare: error: {e}", file=sys.stderr)
        return 1
    print(table.to_markdown())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
