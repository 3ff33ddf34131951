"""Scale: training and evaluation at the size of the papers' largest downstream set (issue 7, "Speed").

Data: an Office-sized synthetic log (``datamodules.synthetic.generate_log``, seed
``DEFAULT_SEED``, 88,000 users x 26,500 items x 690,000 interactions, Zipf alpha 0.75), written as a
RecBole atomic file and read through the zoo's own pipeline (``format: atomic``, 5-core,
leave-one-out): 87,665 users, 25,941 items, 686,666 interactions — the papers' Office is 87,436 /
25,986 / 684,837 (MIRACLE Table 1).

Models, each with its recipe's hyperparameters and training sampler on this data:
SASRec (``recipes/sasrec.yaml``: windows, CE over all items at every position, batch 256) and
ComiRec-DR (``recipes/comirec_dr.yaml``: K = 4 interests, sampled softmax with 1,280 negatives,
every prefix, batch 128; here under leave-one-out with 5-core like the Office recipes).

Per model, in fresh processes:

* training (its own process): ``--train-steps`` optimiser steps through ``Trainer.fit`` (no
  validation); the epoch time is EXTRAPOLATED as median step time (first 3 steps dropped) x
  steps per epoch;
* evaluation (an evaluation-only process, untrained weights: the cost does not depend on them):
  ``Trainer.test`` = full ranking of all 25,942 items for every test user
  (87,665), wall time and the test loop's own peak RSS increase (``VmHWM`` reset at its start,
  minus the resident size before it), next to the bare ``[users*K x d] @ [d x items]`` product
  (done per evaluation batch into one reused buffer: all at once it would not fit in memory);
* the same evaluation for the first ``--small-users`` users only (same model, same items): the
  test loop's peak RSS increase must not grow with the number of users (scores are
  ``[batch, items]`` per batch, metrics are running sums).

Usage::

    .venv/bin/python benchmarks/speed_scale.py --out benchmarks/results/speed.md
    .venv/bin/python benchmarks/speed_scale.py --eval-users 2000 --small-users 500 --train-steps 5 --out /tmp/s.md  # smoke
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.speed_common import (  # noqa: E402
    dump_json,
    fmt_bytes,
    header_md,
    loadavg,
    machine_info,
    run_measured,
    tail,
    update_results_md,
)

MODELS = {
    "SASRec": ("sasrec", {}, {}),
    "ComiRec-DR": ("comirec_dr", {}, dict(protocol="leave_one_out", k_core=5, min_seq_len=0)),
    "GRU4Rec": ("gru4rec", {}, {}),
    "MIND": ("mind", {}, dict(protocol="leave_one_out", k_core=5, min_seq_len=0)),
    # TiMiRec's fine-tuning stage from scratch; full ranking (the recipe's 1,000 sampled negatives off)
    "TiMiRec": ("timirec", dict(pretrained_ckpt=None), dict(eval_negatives=0)),
    # the synthetic log has no text or images: HM4SR's ID branch with both MoEs and every ID-side loss
    "HM4SR": ("hm4sr", dict(use_text=False, use_image=False, use_cp=False), dict(image_features=None)),
}


def worker(spec: dict[str, Any]) -> None:
    """One fresh process: build, optionally train ``train_steps`` steps, then test; JSON out."""
    import torch

    from benchmarks.speed_timer import PhaseTimer
    from benchmarks.speed_zoo import build, limit_eval_users, trainer

    torch.manual_seed(0)
    recipe, m_args, d_args = MODELS[spec["model"]]
    data = dict(format="atomic", paths={"path": spec["inter"]}, cache_dir=spec["cache"], require_text=False,
                text_encoder=None, num_workers=0, **d_args)
    t0 = time.perf_counter()
    model, dm = build(recipe, m_args, data)
    build_s = time.perf_counter() - t0
    limit_eval_users(dm, spec.get("eval_users"))
    out: dict[str, Any] = {"build_s": build_s, "info": {k: dm.info[k] for k in ("num_users", "num_items", "num_interactions")}}
    if spec.get("train_steps"):
        timer = PhaseTimer(out=spec["json"] + ".fit")
        tr = trainer(max_steps=spec["train_steps"], limit_val_batches=0, callbacks=[timer])
        tr.fit(model, datamodule=dm)
        steps = timer.rec["train_steps"]
        dm.setup("fit")
        out.update(step_s=steps, steps_per_epoch=len(dm.train_dataloader()), train_examples=len(dm.train_set),
                   train_sampling=dm.train_sampling, batch_size=dm.batch_size)
    if spec.get("train_steps"):  # a training process only: its memory would blur the test loop's
        dump_json(Path(spec["json"]), out)
        return
    timer = PhaseTimer(out=spec["json"] + ".test")
    tr = trainer(callbacks=[timer])
    tr.test(model, datamodule=dm, verbose=False)
    rec = timer.rec["test"][0]
    # the bare product of the same size (one call), for the ratio
    dm.setup("test")
    n_users = len(dm.eval_sets["test"])
    batch = next(iter(dm.test_dataloader()))
    model.eval()
    with torch.no_grad():
        rep = model.user_representation(batch)
    t = rep[0] if isinstance(rep, tuple) else rep
    K, d = (int(t.shape[1]) if t.dim() == 3 else 1), int(t.shape[-1])
    # the bare product per evaluation batch into one reused output buffer: [users*K, N+1] at once
    # would not fit in memory at this scale (87k x 4 x 26k floats = 36 GB)
    bs = dm.eval_batch_size
    B = torch.randn(d, model.num_items + 1)
    A = torch.randn(bs * K, d)
    buf = torch.empty(bs * K, model.num_items + 1)
    torch.mm(A, B, out=buf)
    t0 = time.perf_counter()
    for s0 in range(0, n_users, bs):
        rows = min(bs, n_users - s0) * K
        torch.mm(A[:rows], B, out=buf[:rows])
    bare = time.perf_counter() - t0
    out.update(test_s=rec["seconds"], test_rss_before=rec["rss_before_bytes"], test_peak=rec["peak_rss_bytes"],
               eval_users=n_users, eval_batch=dm.eval_batch_size, K=K, d=d, bare_s=bare,
               metrics={k: float(v) for k, v in tr.callback_metrics.items()})
    dump_json(Path(spec["json"]), out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--train-steps", type=int, default=30)
    ap.add_argument("--eval-users", type=int, default=None, help="evaluate only this many users (default all)")
    ap.add_argument("--small-users", type=int, default=10_000, help="the second, smaller user count")
    ap.add_argument("--workdir", default="/tmp/zoo-speed-scale")
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        return worker(json.loads(a.worker))

    from benchmarks.speed_zoo import office_atomic

    info = machine_info()
    work = Path(a.workdir)
    t0 = time.perf_counter()
    inter = office_atomic(work / "atomic")
    gen_s = time.perf_counter() - t0
    results = []
    for name in a.models:
        # (users to evaluate, training steps): a training-only process, then evaluation-only processes
        # at the full (0 = every user) and the small user count
        runs = ([(0, a.train_steps)] if a.train_steps else []) + [(a.eval_users or 0, 0), (a.small_users, 0)]
        for users, steps in runs:
            js = work / f"scale_{name}_{'train' if steps else users or 'all'}.json"
            spec = dict(model=name, inter=str(inter), cache=str(work / "cache"), eval_users=users,
                        train_steps=steps, json=str(js))
            load0 = loadavg()
            run = run_measured([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
                               log=js.with_suffix(".log"))
            if run["rc"] != 0:
                sys.exit(f"{name} failed (rc {run['rc']}), log {js.with_suffix('.log')}:\n{tail(js.with_suffix('.log'))}")
            r = json.loads(js.read_text())
            r.update(model=name, run=run, load=f"{load0} → {loadavg()}", requested_users=users)
            results.append(r)
            if "test_s" in r:
                print(f"[scale] {name} users={r['eval_users']}: test {r['test_s']:.1f} s, "
                      f"peak +{fmt_bytes(r['test_peak'] - r['test_rss_before'])}", flush=True)
    dump_json(work / "scale_result.json", results)
    md = render(results, info, gen_s, " ".join(shlex.quote(x) for x in [".venv/bin/python", "benchmarks/speed_scale.py"]
                                                + (argv if argv is not None else sys.argv[1:])))
    print(md)
    if a.out:
        update_results_md(Path(a.out), "scale", md)


def render(results: list[dict[str, Any]], info: dict[str, Any], gen_s: float, command: str) -> str:
    i = results[0]["info"]
    lines = [header_md("Scale: an Office-sized dataset", command, info, [
        f"- data: synthetic Office-sized log generated in {gen_s:.1f} s (0 s when cached), read through "
        f"`format: atomic`, 5-core, leave-one-out: **{i['num_users']:,} users, {i['num_items']:,} items, "
        f"{i['num_interactions']:,} interactions** (papers' Office: 87,436 / 25,986 / 684,837)",
        "- epoch times are EXTRAPOLATED: median optimiser-step time over the timed steps (first 3 dropped) × "
        "steps per epoch",
        "",
        "| model | sampler (batch) | steps / epoch | median step s (steps timed) | epoch s (extrapolated) | "
        "process peak RSS |",
        "|---|---|---:|---:|---:|---:|",
    ])]
    for r in results:
        if "step_s" in r:
            steps = r["step_s"][3:] or r["step_s"]
            med = statistics.median(steps)
            lines.append(f"| {r['model']} | {r['train_sampling']} ({r['batch_size']}) | {r['steps_per_epoch']:,} | "
                         f"{med:.3f} ({len(r['step_s'])}) | {med * r['steps_per_epoch']:.0f} | {fmt_bytes(r['run']['peak_rss_bytes'])} |")
    lines += [
        "",
        "Full-ranking evaluation (every item for every evaluated user), each row a fresh process:",
        "",
        "| model | users evaluated | items (K, d) | eval s | eval / bare product | s per 1k users | "
        "RSS before test | **test-loop peak RSS increase** | process peak RSS | load avg |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        if "test_s" not in r:
            continue
        inc = r["test_peak"] - r["test_rss_before"]
        lines.append(
            f"| {r['model']} | {r['eval_users']:,} | {i['num_items'] + 1:,} ({r['K']}, {r['d']}) | {r['test_s']:.1f} | "
            f"{r['test_s'] / r['bare_s']:.2f} | {1000 * r['test_s'] / r['eval_users']:.3f} | "
            f"{fmt_bytes(r['test_rss_before'])} | **{fmt_bytes(inc)}** | {fmt_bytes(r['run']['peak_rss_bytes'])} | {r['load']} |"
        )
    by_model: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        if "test_s" in r:
            by_model.setdefault(r["model"], []).append(r)
    lines.append("")
    for m, rs in by_model.items():
        if len(rs) == 2 and rs[0]["eval_users"] != rs[1]["eval_users"]:
            big, small = sorted(rs, key=lambda r: -r["eval_users"])
            ib, is_ = big["test_peak"] - big["test_rss_before"], small["test_peak"] - small["test_rss_before"]
            lines.append(f"- {m}: {big['eval_users'] / small['eval_users']:.1f}× the users → test-loop peak increase "
                         f"×{ib / max(is_, 1):.2f} ({fmt_bytes(is_)} → {fmt_bytes(ib)}); eval time "
                         f"×{big['test_s'] / small['test_s']:.2f}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
