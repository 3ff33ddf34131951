"""Train one RecBole model on the exported split and write each test user's rank of the target.

Runs INSIDE RecBole's own virtualenv (``bash benchmarks/recbole_env.sh``), never the zoo's; RecBole
1.2.1 is used unmodified through its API (Config, create_dataset, data_preparation, Trainer).
Started by ``benchmarks/peers/run.py``; by hand::

    .venv-recbole/bin/python benchmarks/peers/recbole_driver.py --data /tmp/peers/data/recbole \\
        --model SASRec --seed 0 --epochs 10 --out /tmp/peers/runs/recbole-SASRec-s0 --hp '{"d": 64, ...}'

Training: RecBole's own trainer for exactly ``--epochs`` epochs (``stopping_step`` larger than the
epochs: no early stop), validation NDCG@10 after every epoch, the best-validation weights kept
(RecBole's ``saved=True``), as the zoo's ``best.ckpt``.

Ranks: for every row of ``<name>.test.inter`` the driver builds RecBole's own input (item list
left-aligned, ``item_length``), calls ``model.full_sort_predict`` and ranks the target against all
items with the user's history masked (every item of the user's train and valid rows, the target
excepted; the padding id too) -- the zoo's ``mask_history: true`` -- with the zoo's pessimistic
tie rule: rank = #{items scoring >= the target} - 1 (0-based).  RecBole's own test metrics (which
do NOT mask history for sequential models) are written beside them for reference.

Output ``--out``: ``peer_ranks.npz`` (``user`` = zoo user index, ``target``, ``rank``) and
``peer_result.json`` (config, RecBole's own metrics, per-epoch losses and validation, timings).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # RecBole 1.2.1's checkpoints hold a Config

NAME = "ml_latest_small"


def _dump(path: Path, obj: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, default=str)
    os.replace(tmp, path)


def read_rows(folder: Path, stage: str) -> list[tuple[str, list[str], str]]:
    """(user token, history tokens, target token) per row of ``<name>.<stage>.inter``."""
    with open(folder / f"{NAME}.{stage}.inter", encoding="utf-8") as f:
        r = csv.reader(f, delimiter="\t")
        next(r)
        return [(u, h.split(" ") if h else [], i) for u, h, i in r]


def config_dict(a: argparse.Namespace, hp: dict[str, Any]) -> dict[str, Any]:
    """RecBole settings matched to the zoo's (the shared ``hp`` from run.py)."""
    common = {
        "data_path": str(Path(a.data).resolve()), "checkpoint_dir": str(Path(a.out).resolve() / "ckpt"),
        "benchmark_filename": ["train", "valid", "test"], "alias_of_item_id": ["item_id_list"],
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": None,
        "load_col": {"inter": ["user_id", "item_id_list", "item_id"]},
        "MAX_ITEM_LIST_LENGTH": hp["max_len"],
        "user_inter_num_interval": "[0,inf)", "item_inter_num_interval": "[0,inf)",
        "rm_dup_inter": None, "val_interval": None, "filter_inter_by_user_or_item": False,
        "eval_args": {"split": {"RS": [1.0, 0.0, 0.0]}, "order": "TO", "group_by": "user", "mode": "full"},
        "train_neg_sample_args": None, "loss_type": "CE",
        "epochs": a.epochs, "train_batch_size": hp["batch"], "eval_batch_size": hp["eval_batch"],
        "learner": "adam", "learning_rate": hp["lr"], "weight_decay": hp.get("weight_decay", 0.0),
        "metrics": ["Hit", "NDCG", "MRR"], "topk": [10, 20, 50], "valid_metric": "NDCG@10",
        "stopping_step": a.epochs + 1, "eval_step": 1, "seed": a.seed, "reproducibility": True,
        "use_gpu": False, "gpu_id": "", "device": "cpu", "worker": 0, "show_progress": False,
        "state": "INFO", "log_wandb": False, "save_dataset": False, "save_dataloaders": False,
    }
    if a.model == "SASRec":
        common.update({"hidden_size": hp["d"], "inner_size": 4 * hp["d"], "n_layers": hp["n_layers"],
                       "n_heads": hp["n_heads"], "hidden_dropout_prob": hp["dropout"],
                       "attn_dropout_prob": hp["dropout"], "hidden_act": "gelu", "layer_norm_eps": 1e-12,
                       "initializer_range": 0.02})
    elif a.model == "GRU4Rec":
        common.update({"embedding_size": hp["d"], "hidden_size": hp["d_hidden"], "num_layers": hp["n_layers"],
                       "dropout_prob": hp["dropout"]})
    else:
        raise ValueError(f"--model must be SASRec or GRU4Rec, got {a.model!r}")
    return common


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True, help="folder holding <name>/<name>.{train,valid,test}.inter")
    p.add_argument("--model", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--hp", required=True, help="JSON of the matched hyperparameters")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    hp = json.loads(a.hp)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    import numpy as np
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.data.interaction import Interaction
    from recbole.utils import get_model, get_trainer, init_logger, init_seed

    cfg = config_dict(a, hp)
    config = Config(model=a.model, dataset=NAME, config_dict=cfg)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    log: list[dict[str, Any]] = []
    orig_train = trainer._train_epoch

    def logged_train(train_data, epoch_idx, *args, **kw):
        t = time.perf_counter()
        loss = orig_train(train_data, epoch_idx, *args, **kw)
        log.append({"epoch": epoch_idx, "loss": float(loss if not isinstance(loss, tuple) else sum(loss)),
                    "train_s": time.perf_counter() - t})
        return loss

    trainer._train_epoch = logged_train
    t0 = time.perf_counter()
    best_valid, best_valid_result = trainer.fit(train_data, valid_data, saved=True, show_progress=False, verbose=True)
    fit_s = time.perf_counter() - t0
    own = trainer.evaluate(test_data, load_best_model=True, show_progress=False)  # loads the best-validation weights
    model = trainer.model
    model.eval()

    # --- per-user ranks with the history masked, RecBole's input format
    folder = Path(a.data) / NAME
    hist: dict[str, set[str]] = {}
    for stage in ("train", "valid"):
        for u, h, i in read_rows(folder, stage):
            hist.setdefault(u, set()).update(h)
            hist[u].add(i)
    rows = read_rows(folder, "test")
    L = hp["max_len"]
    users, targets, ranks = [], [], []
    with torch.no_grad():
        for b0 in range(0, len(rows), 256):
            chunk = rows[b0 : b0 + 256]
            B = len(chunk)
            seq = torch.zeros(B, L, dtype=torch.long)
            length = torch.zeros(B, dtype=torch.long)
            for r, (_u, h, _i) in enumerate(chunk):
                h = h[-L:]
                seq[r, : len(h)] = torch.as_tensor(dataset.token2id("item_id", h))
                length[r] = len(h)
            inter = Interaction({"item_id_list": seq, "item_length": length})
            scores = model.full_sort_predict(inter).view(B, -1).clone()  # [B, n_items] RecBole ids, 0 = pad
            tgt = torch.as_tensor(dataset.token2id("item_id", [i for _u, _h, i in chunk]))
            scores[:, 0] = -torch.inf
            for r, (u, _h, i) in enumerate(chunk):
                masked = [t for t in hist[u] if t != i]
                if masked:
                    scores[r, torch.as_tensor(dataset.token2id("item_id", masked))] = -torch.inf
            ts = scores.gather(1, tgt[:, None])  # [B, 1]
            ranks.append((scores >= ts).sum(1) - 1)
            users += [int(u) for u, _h, _i in chunk]
            targets += [int(i) for _u, _h, i in chunk]
    rank = torch.cat(ranks).numpy().astype(np.int64)
    fd, tmp = tempfile.mkstemp(prefix=".peer_ranks.npz.", suffix=".tmp", dir=out)
    with os.fdopen(fd, "wb") as f:
        np.savez_compressed(f, user=np.asarray(users, dtype=np.int64), target=np.asarray(targets, dtype=np.int64), rank=rank)
    os.replace(tmp, out / "peer_ranks.npz")
    _dump(out / "peer_result.json", {
        "framework": "RecBole", "version": __import__("recbole").__version__, "torch": torch.__version__,
        "model": a.model, "seed": a.seed, "epochs": a.epochs, "hp": hp,
        "recbole_config": {k: v for k, v in cfg.items() if k not in ("data_path", "checkpoint_dir")},
        "best_valid_ndcg@10": float(best_valid), "best_valid": {k: float(v) for k, v in best_valid_result.items()},
        "recbole_test_unmasked": {k: float(v) for k, v in own.items()},
        "epoch_log": log, "fit_s": fit_s, "total_s": time.perf_counter() - t_start,
        "n_items_recbole": int(dataset.item_num - 1), "n_test_users": len(users),
    })
    for f in (out / "ckpt").glob("*.pth"):
        f.unlink()  # the weights are not kept (tens of MB per run)


if __name__ == "__main__":
    main()
