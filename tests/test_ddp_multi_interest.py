"""2-process CPU DDP (gloo) equals 1 process for a multi-interest model under user_split: ComiRec-DR's
max-over-interests full ranking with the multi-target metrics (recall, NDCG, ComiRec's NDCG, hit
rate over every held-out item), whose sum states must sync exactly across ranks."""

from __future__ import annotations

import json

import pytest
from conftest import write_movielens_latest
from test_cli import tiny_data_args, zoo

COMIREC_DR = ["--config", "recipes/comirec_dr.yaml", "--data.init_args.k_core", "5", "--data.init_args.min_seq_len", "5",
              "--model.init_args.max_len", "10", "--model.init_args.d", "16", "--model.init_args.K", "2",
              "--model.init_args.n_neg", "20", "--model.init_args.topk", "[5, 10]", "--monitor", "val/recall@10"]


def test_ddp_two_processes_equal_one_multi_interest(tmp_path):
    ml = write_movielens_latest(tmp_path / "ml", n_users=105, seed=3)  # ~10 validation users, batches of 4
    data = [*tiny_data_args(ml, tmp_path / "cache"), "--data.init_args.eval_batch_size", "4"]
    r = zoo("fit", *COMIREC_DR, *data, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "4",
            "--test_after_fit", "false", "--run_dir", str(tmp_path / "fit"))
    assert r.returncode == 0, r.stderr[-3000:]
    common = ["validate", *COMIREC_DR, *data, "--ckpt_path", str(tmp_path / "fit" / "best.ckpt"),
              "--trainer.accelerator", "cpu"]
    one = zoo(*common, "--run_dir", str(tmp_path / "v1"))
    assert one.returncode == 0, one.stderr[-3000:]
    two = zoo(*common, "--trainer.devices", "2", "--trainer.strategy", "ddp", "--run_dir", str(tmp_path / "v2"))
    assert two.returncode == 0, two.stderr[-3000:]
    m1, m2 = (json.loads(next((tmp_path / v).glob("validate-*.json")).read_text())["validate"] for v in ("v1", "v2"))
    assert {"val/recall@10", "val/ndcg@10", "val/ndcg_comirec@10", "val/hr@10"} <= m1.keys() == m2.keys()
    assert 0 < m1["val/recall@10"] < 1  # a metric that can tell the runs apart
    for k in m1:
        assert m2[k] == pytest.approx(m1[k], abs=1e-6), k
