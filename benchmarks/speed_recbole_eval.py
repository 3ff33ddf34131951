"""Full-ranking evaluation, the zoo vs RecBole 1.2.1, SASRec at Office size (issue 13, item 3).

``speed_recbole.py`` compares whole runs on the small embedded default (671 users); this compares
the evaluation alone where it costs something: the Office-sized synthetic log
(``benchmarks/speed_zoo.office_atomic``: 88,000 users, 26,500 items, 690,000 interactions before
the 5-core filter; ``--users`` keeps the first N users).

1. The zoo processes the log (5-core, leave-one-out, ``max_len`` 50) and the processed split is
   exported with :func:`datamodules.atomic.export_atomic` to ONE RecBole atomic file, which
   RecBole reads with every filter off and splits ``LS: valid_and_test``, ``order: TO``, i.e. the
   same leave-one-out split; the RecBole worker returns its test target per user and the driver
   checks that every one is the zoo's.
2. Both sides build SASRec with the same sizes (``speed_recbole.HP``: d 64, 2 layers, 2 heads, FFN
   256, max_len 50) and random weights: what a full-ranking evaluation costs does not depend on
   the weights, so nothing is trained.  The same evaluation batch (512 users), full ranking of
   every item, Recall/NDCG/MRR/Hit at 10/20/50, no history masking (neither masks for sequential
   models).
3. Each side's evaluation of every test user is timed in its own fresh process: RecBole's
   ``Trainer.evaluate(test_data)`` and the zoo's ``Trainer.test`` (batches, encoder, ranking,
   metrics, exactly what ``zoo test`` runs after loading), one untimed warm-up, then
   ``--repeats`` timed; wall and CPU seconds (``process_time``, all threads).  Rounds alternate
   the order (RecBole first, then the zoo first, ...), so both see the same machine load; the
   ratio is RecBole's median over the zoo's.

Usage::

    bash benchmarks/recbole_env.sh        # once: .venv-recbole
    .venv/bin/python benchmarks/speed_recbole_eval.py --out benchmarks/results/speed.md
    .venv/bin/python benchmarks/speed_recbole_eval.py --users 3000 --rounds 1 --repeats 1   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.speed_common import REPO, command_line, dump_json, header_md, loadavg, machine_info, publish, tail  # noqa: E402
from benchmarks.speed_recbole import HP, SEED, ensure_recbole_env, recbole_data  # noqa: E402

NAME = "office_eval"


def _timed(fn, repeats: int) -> dict[str, list[float]]:
    """One untimed warm-up call, then ``repeats`` timed: wall and process CPU seconds."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"wall_s": wall, "cpu_s": cpu}


# ============================================================================ workers
def recbole_worker(a: argparse.Namespace) -> None:
    """Inside RecBole's venv: load the exported split, build SASRec, time ``Trainer.evaluate``."""
    import torch
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer

    torch.set_num_threads(a.threads)
    config, dataset, (_, _, test_data), data_s, test_split = recbole_data(a.data_path, a.checkpoint_dir, NAME, 0)
    tds = test_data._dataset
    model = SASRec(config, tds).to("cpu")
    trainer = Trainer(config, model)
    res = _timed(lambda: trainer.evaluate(test_data, load_best_model=False, show_progress=False), a.repeats)
    dump_json(Path(a.json), dict(
        res, framework="RecBole", version=__import__("recbole").__version__, torch=torch.__version__,
        threads=torch.get_num_threads(), data_s=data_s, n_test=len(tds), n_items=int(dataset.item_num - 1),
        batches=len(test_data), test_split=test_split,
    ))


def zoo_worker(a: argparse.Namespace) -> None:
    """In the zoo's venv: the same split from the zoo's cache, SASRec, time ``Trainer.test``."""
    import torch

    from benchmarks.speed_zoo import build, trainer

    torch.set_num_threads(a.threads)
    torch.manual_seed(SEED)
    model, dm = build("sasrec", {}, data_args(Path(a.workdir)))
    tr = trainer()
    dm.setup("test")
    res = _timed(lambda: tr.test(model, datamodule=dm, verbose=False), a.repeats)
    dump_json(Path(a.json), dict(
        res, framework="zoo", torch=torch.__version__, threads=torch.get_num_threads(),
        n_test=len(dm.eval_sets["test"].user), n_items=int(dm.num_items), batches=len(dm.test_dataloader()),
        metrics={k: float(v) for k, v in tr.callback_metrics.items()},
    ))


# ============================================================================ driver
def data_args(workdir: Path) -> dict[str, Any]:
    """The zoo datamodule options for the exported log (``--users`` chose it in ``prepare``)."""
    spec = json.loads((workdir / "split.json").read_text(encoding="utf-8"))
    return dict(format="atomic", paths={"path": spec["raw"]}, k_core=5, cache_dir=str(workdir / "zoo_cache"),
                require_text=False, text_encoder=None, max_len=HP["max_len"], eval_batch_size=HP["eval_batch"])


def prepare(workdir: Path, users: int | None) -> dict[str, Any]:
    """Office-sized log -> the zoo's processed split -> RecBole atomic file; the zoo's test targets."""
    import numpy as np

    from benchmarks.speed_zoo import office_atomic
    from datamodules.atomic import export_atomic
    from datamodules.base import SequentialDataModule

    raw = office_atomic(workdir / "raw", users=users)
    (workdir / "split.json").write_text(json.dumps({"raw": str(raw)}), encoding="utf-8")
    d = SequentialDataModule(**data_args(workdir)).data
    lens = np.diff(d.user_ptr)
    user = np.repeat(np.arange(d.num_users), lens)
    export_atomic(user, d.items, d.times, workdir / "recbole" / NAME, NAME)
    ends = d.user_ptr[1:]
    test = {str(u): str(int(d.items[e - 1])) for u, e in enumerate(ends) if lens[u] >= 3}
    return dict(raw=str(raw), n_users=int(d.num_users), n_items=int(np.unique(d.items).size),
                n_inter=int(len(d.items)), test_split=test)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=None, help="only the first N users of the generator (default all)")
    ap.add_argument("--rounds", type=int, default=2, help="RecBole/zoo pairs, the order alternating")
    ap.add_argument("--repeats", type=int, default=2, help="timed evaluations per worker after a warm-up")
    ap.add_argument("--threads", type=int, default=1, help="torch threads on each side")
    ap.add_argument("--workdir", default="/tmp/zoo-speed-recbole-eval")
    ap.add_argument("--recbole-python", default=str(REPO / ".venv-recbole/bin/python"))
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per worker")
    ap.add_argument("--out", default=None, help="markdown results file (section 'recbole_eval' is replaced)")
    ap.add_argument("--worker", choices=("recbole", "zoo"), help=argparse.SUPPRESS)
    ap.add_argument("--data-path", help=argparse.SUPPRESS)
    ap.add_argument("--checkpoint-dir", help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker == "recbole":
        return recbole_worker(a)
    if a.worker == "zoo":
        return zoo_worker(a)

    ensure_recbole_env(a.recbole_python)
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    split = prepare(work, a.users)
    print(f"[recbole_eval] split: {split['n_users']:,} users, {split['n_items']:,} items, "
          f"{split['n_inter']:,} interactions", flush=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(a.threads), "MKL_NUM_THREADS": str(a.threads),
           "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "WANDB_MODE": "disabled"}
    base = [str(Path(__file__).resolve()), "--repeats", str(a.repeats), "--threads", str(a.threads), "--workdir", str(work)]
    cmds = {
        "recbole": [a.recbole_python, *base, "--worker", "recbole", "--data-path", str(work / "recbole"),
                    "--checkpoint-dir", str(work / "recbole_ckpt")],
        "zoo": [sys.executable, *base, "--worker", "zoo"],
    }
    runs: dict[str, list[dict[str, Any]]] = {"recbole": [], "zoo": []}
    loads = [loadavg()]
    for r in range(a.rounds):
        for side in (("recbole", "zoo") if r % 2 == 0 else ("zoo", "recbole")):
            out, log = work / f"{side}-{r}.json", work / f"{side}-{r}.log"
            with open(log, "w", encoding="utf-8") as fh:
                rc = subprocess.run(cmds[side] + ["--json", str(out)], cwd=REPO, env=env, stdout=fh,
                                    stderr=subprocess.STDOUT, timeout=a.timeout).returncode
            if rc != 0 or not out.is_file():
                sys.exit(f"[recbole_eval] {side} worker failed (rc {rc}); log {log}:\n{tail(log)}")
            runs[side].append(json.loads(out.read_text(encoding="utf-8")))
            loads.append(loadavg())
            print(f"[recbole_eval] round {r} {side}: wall {runs[side][-1]['wall_s']}", flush=True)

    rb_split = runs["recbole"][0].pop("test_split")
    for run in runs["recbole"][1:]:
        run.pop("test_split")
    differ = sum(rb_split.get(u) != t for u, t in split["test_split"].items())
    split_ok = set(rb_split) == set(split["test_split"]) and differ == 0
    result = dict(info=info, users_arg=a.users, split={k: v for k, v in split.items() if k != "test_split"},
                  split_ok=split_ok, targets_differ=differ, runs=runs, loads=loads, rounds=a.rounds,
                  repeats=a.repeats, threads=a.threads)
    result["command"] = command_line([".venv/bin/python", "benchmarks/speed_recbole_eval.py"], argv)
    publish(result, work / "result.json", render(result), a.out, "recbole_eval")


def render(r: dict[str, Any]) -> str:
    def med(side: str, key: str) -> float:
        return statistics.median(x for run in r["runs"][side] for x in run[key])

    def spread(side: str, key: str) -> str:
        xs = [x for run in r["runs"][side] for x in run[key]]
        return f"{min(xs):.2f}-{max(xs):.2f}"

    rb, zoo = r["runs"]["recbole"][0], r["runs"]["zoo"][0]
    s = r["split"]
    pairs = [statistics.median(b["wall_s"]) / statistics.median(z["wall_s"])
             for b, z in zip(r["runs"]["recbole"], r["runs"]["zoo"])]
    lines = [header_md("Full-ranking evaluation against RecBole at Office size", r["command"], r["info"], [
        "- data: the Office-sized synthetic log (`benchmarks/speed_zoo.office_atomic`"
        + (f", first {r['users_arg']:,} users" if r["users_arg"] else "") + f"), 5-core by the zoo: "
        f"**{s['n_users']:,} users, {s['n_items']:,} items**, {s['n_inter']:,} interactions; exported to RecBole "
        f"(`export_atomic`), RecBole's own leave-one-out split: "
        + ("**identical** (every test target equal)" if r["split_ok"] else
           f"**NOT identical** ({r['targets_differ']} test targets differ)"),
        f"- model: SASRec on both sides, d {HP['d']}, {HP['n_layers']} layers, {HP['n_heads']} heads, FFN {HP['d_ff']}, "
        f"max_len {HP['max_len']}, random weights (evaluation cost does not depend on them); evaluation batch "
        f"{HP['eval_batch']} users; full ranking of every item; Recall/NDCG/MRR/Hit@10/20/50",
        f"- timed: RecBole `Trainer.evaluate(test_data)` ({rb['n_test']:,} test users, {rb['batches']} batches) and "
        f"the zoo `Trainer.test` ({zoo['n_test']:,} users, {zoo['batches']} batches), each in its own fresh process "
        f"with {r['threads']} torch thread(s), one warm-up then {r['repeats']} timed; {r['rounds']} round(s), the "
        "order alternating; medians over all timed evaluations",
        f"- load average (1/5/15 min) at the start and after each worker: {'; '.join(r['loads'])}",
        "",
        "| | RecBole 1.2.1 | zoo | **RecBole / zoo** |",
        "|---|---:|---:|---:|",
        f"| wall s per full evaluation (range) | {med('recbole', 'wall_s'):.2f} ({spread('recbole', 'wall_s')}) | "
        f"{med('zoo', 'wall_s'):.2f} ({spread('zoo', 'wall_s')}) | **{med('recbole', 'wall_s') / med('zoo', 'wall_s'):.2f}x** "
        f"(per round {', '.join(f'{p:.2f}' for p in pairs)}) |",
        f"| CPU s per full evaluation | {med('recbole', 'cpu_s'):.2f} | {med('zoo', 'cpu_s'):.2f} | "
        f"**{med('recbole', 'cpu_s') / med('zoo', 'cpu_s'):.2f}x** |",
        f"| users per wall second | {rb['n_test'] / med('recbole', 'wall_s'):,.0f} | "
        f"{zoo['n_test'] / med('zoo', 'wall_s'):,.0f} | |",
    ])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
