"""W&B logging of a real `zoo fit`: offline run with the resolved config and every logged key; off = no W&B."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
ZOO = str(Path(sys.executable).parent / "zoo")


def tiny_fit(ml_folder: Path, out: Path, wandb: str, env: dict | None = None) -> subprocess.CompletedProcess:
    args = [ZOO, "fit", "--config", "recipes/sasrec.yaml",
            "--data.init_args.format", "movielens", "--data.init_args.paths", json.dumps({"path": str(ml_folder)}),
            "--data.init_args.cache_dir", str(out / "cache"), "--data.init_args.max_len", "10",
            "--data.init_args.batch_size", "32", "--model.init_args.d", "16", "--model.init_args.max_len", "10",
            "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "3", "--trainer.log_every_n_steps", "1",
            "--run_dir", str(out / "run"), "--wandb", wandb]
    e = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600, env=e)


def test_offline_run_holds_config_and_logged_keys(ml_folder, tmp_path):
    r = tiny_fit(ml_folder, tmp_path, "offline")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((tmp_path / "run").rglob("*"))[:50]
    blob = b"".join(p.read_bytes() for p in runs[0].glob("*.wandb"))
    assert blob, "no offline .wandb log"
    # the full resolved config (a config record inside the offline log; files/config.yaml only once synced)
    for needle in (b"zoo.models.sasrec.SASRec", b"init_args", b"max_len", b"movielens", b"max_epochs", b"monitor",
                   b"val/ndcg@10", str(ml_folder).encode()):
        assert needle in blob, needle
    # every loss term per step, validation metrics per epoch, test metrics
    for key in (b"train/loss", b"val/ndcg@10", b"val/recall@10", b"test/ndcg@10", b"test/recall@50", b"epoch"):
        assert key in blob, key
    assert (tmp_path / "run" / "test_metrics.json").is_file()


def test_wandb_off_and_disabled_never_touch_wandb(ml_folder, tmp_path):
    r = tiny_fit(ml_folder, tmp_path / "off", "off")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "off" / "run" / "test_metrics.json").is_file()
    assert not (tmp_path / "off" / "run" / "wandb").exists()
    r = tiny_fit(ml_folder, tmp_path / "dis", "offline", env={"WANDB_MODE": "disabled"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "dis" / "run" / "test_metrics.json").is_file()
    assert not list((tmp_path / "dis" / "run").glob("wandb/offline-run-*"))
