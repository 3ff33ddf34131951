"""PNG figures from ``zoo reproduce`` / ``zoo ablate`` results (matplotlib, Agg backend).

    python -m zoo.experiments.plot                                       # runs/reproduce, every paper found there
    python -m zoo.experiments.plot --results runs/ablate --paper horae   # one paper's ablation figures
    python -m zoo.experiments.plot --results benchmarks/results          # the committed results

Per paper folder it writes:

* ``metrics-<dataset>.png``: one panel per metric, a bar per model (our mean over seeds, error bar =
  std), the paper's printed value as a black marker where there is one;
* ``ablation-<table>-<dataset>.png``: the same for an ablation table's rows;
* ``curves-<dataset>.png``: training loss per step and the validation metrics per epoch of every
  model (first seed), read from the runs' CSV logs (``<run_dir>/logs/version_*/metrics.csv``).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from zoo.runfiles import atomic_write  # noqa: E402
from zoo.experiments.reproduce import DEFAULT_OUT, NUMBERS, load_numbers, mean_std, paper_value, slug  # noqa: E402


def _save(fig, path: Path) -> Path:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return path


def bar_figure(records: list[dict[str, Any]], table: dict[str, Any], dataset: str, title: str, path: Path) -> Path | None:
    """Bars (ours, mean ± std over seeds) per model and metric, paper values as markers."""
    done = [r for r in records if r["dataset"] == dataset and r["status"] == "done"]
    rows = list(dict.fromkeys(r["model"] for r in done))
    metrics = list(table["metrics"])
    if not rows:
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(4.0, 0.55 * len(rows) + 1.5) * len(metrics) / 1.6, 3.8),
                             squeeze=False)
    for ax, m in zip(axes[0], metrics):
        means, stds, paper = [], [], []
        for row in rows:
            vals = [float(r[f"test/{m}"]) for r in done if r["model"] == row and f"test/{m}" in r]
            mu, sd = mean_std(vals)
            means.append(mu)
            stds.append(sd)
            paper.append(paper_value(table, dataset, row, m))
        x = list(range(len(rows)))
        ax.bar(x, means, yerr=stds, capsize=3, color="#4c72b0", label="ours (mean ± std)")
        px = [i for i, p in zip(x, paper) if p is not None]
        if px:
            ax.scatter(px, [p for p in paper if p is not None], marker="D", color="black", zorder=3, label="paper")
        ax.set_xticks(x, rows, rotation=45, ha="right", fontsize=8)
        ax.set_title(table["metrics"][m], fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def read_metrics_csv(run_dir: Path) -> list[dict[str, str]]:
    """Rows of a run's Lightning CSV log (every version, in order: a resumed run continues)."""
    rows: list[dict[str, str]] = []
    for f in sorted((run_dir / "logs").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1])):
        with open(f, newline="", encoding="utf-8") as fh:
            rows += list(csv.DictReader(fh))
    return rows


def _series(rows: list[dict[str, str]], key: str, x: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in rows:
        v = r.get(key, "")
        if v not in ("", None) and r.get(x, "") not in ("", None):
            xs.append(float(r[x]))
            ys.append(float(v))
    return xs, ys


def curves_figure(records: list[dict[str, Any]], dataset: str, monitor_keys: list[str], title: str, path: Path) -> Path | None:
    """Training loss per step and validation metrics per epoch, one line per model (its first seed)."""
    first: dict[str, dict[str, Any]] = {}
    for r in sorted((r for r in records if r["dataset"] == dataset and r["status"] == "done"), key=lambda r: r["seed"]):
        first.setdefault(r["model"], r)
    logs = {m: read_metrics_csv(Path(r["run_dir"])) for m, r in first.items()}
    logs = {m: rows for m, rows in logs.items() if rows}
    if not logs:
        return None
    fig, axes = plt.subplots(1, 1 + len(monitor_keys), figsize=(4.2 * (1 + len(monitor_keys)), 3.6), squeeze=False)
    for model, rows in logs.items():
        xs, ys = _series(rows, "train/loss", "step")
        if xs:
            axes[0][0].plot(xs, ys, label=model, lw=1)
        for ax, key in zip(axes[0][1:], monitor_keys):
            ex, ey = _series(rows, f"val/{key}", "epoch")
            if ex:
                ax.plot(ex, ey, marker="o", ms=3, label=model)
    axes[0][0].set_title("train/loss per step", fontsize=10)
    axes[0][0].set_xlabel("step")
    for ax, key in zip(axes[0][1:], monitor_keys):
        ax.set_title(f"val/{key} per epoch", fontsize=10)
        ax.set_xlabel("epoch")
    for ax in axes[0]:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_paper(folder: Path, paper: str, numbers: dict[str, Any]) -> list[Path]:
    """Every figure of one paper's results folder."""
    written: list[Path] = []
    info = numbers[paper]
    main_json = folder / "results.json"
    if main_json.is_file():
        records = json.loads(main_json.read_text())["runs"]
        table = info["main"]
        for ds in dict.fromkeys(r["dataset"] for r in records):
            p = bar_figure(records, table, ds, f"{paper} {table['table']} · {ds}", folder / f"metrics-{slug(ds)}.png")
            written += [p] if p else []
            keys = list(table["metrics"])[:2]
            p = curves_figure(records, ds, keys, f"{paper} · {ds} · training curves", folder / f"curves-{slug(ds)}.png")
            written += [p] if p else []
    tables = {slug(t["table"]): t for t in info.get("ablations") or []}
    for f in sorted(folder.glob("ablation-*.json")):
        data = json.loads(f.read_text())
        table = tables.get(slug(data["table"]))
        if table is None:
            continue
        p = bar_figure(data["runs"], table, data["dataset"], f"{paper} {table['table']} · {data['dataset']}",
                       f.with_suffix(".png"))
        written += [p] if p else []
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m zoo.experiments.plot", description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=DEFAULT_OUT, help="the --out folder of zoo reproduce/ablate")
    ap.add_argument("--paper", default=None, help="only this paper's folder")
    ap.add_argument("--numbers", type=Path, default=NUMBERS)
    ns = ap.parse_args(argv)
    numbers = load_numbers(ns.numbers)
    papers = [ns.paper] if ns.paper else [p for p in numbers if isinstance(numbers[p], dict)]
    written: list[Path] = []
    for p in papers:
        if (ns.results / p).is_dir():
            written += plot_paper(ns.results / p, p, numbers)
    for w in written:
        print(f"[plot] wrote {w}")
    if not written:
        print(f"[plot] no results under {ns.results}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
