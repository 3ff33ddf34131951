"""Training with ``data.group_by_length`` at Office size: how much of a sparse log's padding it saves.

On the papers' Amazon data most positions of a ``max_len`` window are padding (docs/performance.md,
"Padding on sparse data": 9 % real at max_len 50 on the Office-sized log).  With
``data.group_by_length: true`` training batches hold histories of similar length and every
padding-invariant model drops their common padding (``SequentialRecommender.trim_padding``).
This measures the training step with the switch off and on, side by side:

* data: the Office-sized synthetic log (``benchmarks/speed_zoo.office_atomic``, as
  ``speed_scale.py``: 87,665 users x 25,941 items after 5-core, leave-one-out);
* models: ``speed_scale.MODELS`` and MIRACLE's fine-tuning on random text features (each
  recipe's sizes and training sampler on this data);
* per model and round, two fresh one-thread processes (off, on; the order alternates by round),
  each training ``--train-steps`` optimiser steps through ``Trainer.fit`` (no validation);
  the figure is the MEAN step time after the first 3 steps (grouped batches differ in cost, so
  a mean over a random sample of the epoch's batches, not a median), wall and process CPU;
* the epoch is extrapolated as mean step x steps per epoch (the same number of steps either way).

The switch changes which examples share a batch: it is approximate, and this file measures
speed only.  Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/speed_group_by_length.py --out benchmarks/results/speed_train_switches.md
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/speed_group_by_length.py --models SASRec --train-steps 8 --rounds 1  # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.speed_common import (  # noqa: E402
    command_line, dump_json, header_md, loadavg, machine_info, publish, run_measured, tail)
from benchmarks.speed_scale import MODELS as SCALE_MODELS  # noqa: E402

MODELS = {
    **SCALE_MODELS,
    # MIRACLE's transductive fine-tuning from scratch on random 384-d text features (the log has no text)
    "MIRACLE": ("miracle", dict(pretrained_ckpt=None, freeze=[]), dict(text_features="@random")),
}

SKIP = 3  # first steps dropped (allocator warm-up)


def worker(spec: dict[str, Any]) -> None:
    """One fresh process: build with the switch set, train ``train_steps`` steps; JSON out."""
    import torch

    from benchmarks.speed_timer import PhaseTimer
    from benchmarks.speed_zoo import build, trainer

    torch.set_num_threads(1)
    torch.manual_seed(0)
    recipe, m_args, d_args = MODELS[spec["model"]]
    data = dict(format="atomic", paths={"path": spec["inter"]}, cache_dir=spec["cache"], require_text=False,
                text_encoder=None, num_workers=0, group_by_length=spec["group"], **d_args)
    if data.get("text_features") == "@random":
        data["text_features"] = spec["text_features"]
    model, dm = build(recipe, m_args, data)
    clock = PhaseTimer(out=spec["json"] + ".fit")
    trainer(max_steps=spec["train_steps"], limit_val_batches=0, callbacks=[clock]).fit(model, datamodule=dm)
    dm.setup("fit")
    dump_json(Path(spec["json"]), dict(wall=clock.rec["train_steps"], cpu=clock.rec["train_steps_cpu"],
                                       steps_per_epoch=len(dm.train_dataloader()), pad_invariant=bool(model.pad_invariant), max_len=dm.max_len,
                                       train_sampling=dm.train_sampling, batch_size=dm.batch_size))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--train-steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2, help="off/on pairs per model, the order alternating")
    ap.add_argument("--workdir", default="/tmp/zoo-speed-scale")
    ap.add_argument("--out", default=None, help="markdown results file (section 'group_by_length' is replaced)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        return worker(json.loads(a.worker))
    from benchmarks.speed_zoo import office_atomic

    info, work = machine_info(), Path(a.workdir)
    inter, text = office_atomic(work / "atomic"), None
    if any(MODELS[m][2].get("text_features") == "@random" for m in a.models):
        from benchmarks.speed_zoo import random_text_features
        from datamodules.base import SequentialDataModule

        probe = SequentialDataModule(format="atomic", paths={"path": str(inter)}, cache_dir=str(work / "cache"),
                                     require_text=False, text_encoder=None)
        text = str(random_text_features(work / "office_text_384.npy", probe.num_items + 1))
        del probe
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for name in a.models:
        results[name] = {"off": [], "on": []}
        for r in range(a.rounds):
            for side in (("off", "on") if r % 2 == 0 else ("on", "off")):
                js = work / f"gbl_{name}_{side}_{r}.json"
                spec = dict(model=name, inter=str(inter), cache=str(work / "cache"), group=side == "on",
                            train_steps=a.train_steps, json=str(js), text_features=text)
                load0 = loadavg()
                run = run_measured([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
                                   env=env, log=js.with_suffix(".log"))
                if run["rc"] != 0:
                    sys.exit(f"{name} {side} failed (rc {run['rc']}), log {js.with_suffix('.log')}:\n"
                             f"{tail(js.with_suffix('.log'))}")
                res = json.loads(js.read_text())
                res.update(load=f"{load0} → {loadavg()}")
                results[name][side].append(res)
                print(f"[group_by_length] {name} {side} round {r}: mean step "
                      f"{statistics.mean(res['wall'][SKIP:]):.3f} s wall", flush=True)
    out = dict(info=info, results=results, train_steps=a.train_steps, rounds=a.rounds,
               command=command_line(["OMP_NUM_THREADS=1", ".venv/bin/python", "benchmarks/speed_group_by_length.py"], argv))
    publish(out, work / "group_by_length.json", render(out), a.out, "group_by_length")


def render(r: dict[str, Any]) -> str:
    """Markdown: per model the mean step off/on, CPU and wall, the ratio per round and the epoch."""
    lines = [header_md("Training with `data.group_by_length` at Office size (approximate switch)", r["command"], r["info"], [
        f"Office-sized synthetic log (87,665 users x 25,941 items, 5-core, leave-one-out), each model's recipe. Per model "
        f"{r['rounds']} round(s) of two fresh one-thread processes (switch off, on; the order alternating), "
        f"{r['train_steps']} training steps each; mean step time after the first {SKIP}. Epoch = mean step x steps per "
        "epoch (extrapolated). Speed only: the switch changes which examples share a batch.",
        "",
        "| model | sampler, max_len | padding-invariant | steps/epoch | off: CPU s/step | on: CPU s/step | **off / on (CPU)** | "
        "per round (wall) | epoch off → on (extrapolated, CPU) |",
        "|---|---|---|---:|---:|---:|---:|---|---|",
    ])]
    for name, sides in r["results"].items():
        def mean(side: str, key: str) -> float:
            return statistics.mean(x for run in sides[side] for x in run[key][SKIP:])

        off, on = mean("off", "cpu"), mean("on", "cpu")
        per_round = ", ".join(
            f"{statistics.mean(a['wall'][SKIP:]) / statistics.mean(b['wall'][SKIP:]):.2f}"
            for a, b in zip(sides["off"], sides["on"])
        )
        first = sides["off"][0]
        spe = first["steps_per_epoch"]
        lines.append(
            f"| {name} | {first['train_sampling']}, {first['max_len']} | {'yes' if first['pad_invariant'] else 'no'} | "
            f"{spe:,} | {off:.3f} | {on:.3f} | **{off / on:.2f}x** | {per_round} | {off * spe / 60:.1f} → {on * spe / 60:.1f} min |"
        )
    loads = "; ".join(f"{n} {s}: {run['load']}" for n, sides in r["results"].items() for s in ("off", "on")
                      for run in sides[s][:1])
    lines += ["", f"Load averages (first run of each side): {loads}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
