"""benchmarks/speed_recbole_eval.py without RecBole: the exported split carries the zoo's test
targets, the zoo worker times a real ``Trainer.test`` and the report states the ratio."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import benchmarks.speed_zoo as SZ
from benchmarks import speed_recbole_eval as E
from datamodules.atomic import export_atomic


def _tiny_office(workdir: Path, users: int | None = None) -> Path:
    """Stand-in for the Office-sized generator: 40 users, 30 items, 8-12 interactions each."""
    rng = np.random.default_rng(0)
    user, item, time = [], [], []
    for u in range(40 if users is None else users):
        n = int(rng.integers(8, 13))
        user += [u] * n
        item += (rng.choice(30, size=n, replace=False) + 1).tolist()
        time += list(range(1000, 1000 + n))
    path = Path(workdir) / "Office" / "Office.inter"
    export_atomic(np.array(user), np.array(item), np.array(time), path.parent, "Office")
    return path


def test_split_worker_and_report(tmp_path, monkeypatch):
    monkeypatch.setattr(SZ, "office_atomic", _tiny_office)
    split = E.prepare(tmp_path, None)
    assert split["n_users"] == 40 and len(split["test_split"]) == 40
    rb_file = tmp_path / "recbole" / E.NAME / f"{E.NAME}.inter"
    rows = rb_file.read_text(encoding="utf-8").splitlines()
    assert rows[0].split("\t") == ["user_id:token", "item_id:token", "timestamp:float"]
    assert len(rows) - 1 == split["n_inter"]
    # each user's test target is the last item of that user's exported rows (RecBole's LS split)
    last: dict[str, tuple[float, str]] = {}
    for line in rows[1:]:
        u, i, t = line.split("\t")
        if u not in last or float(t) >= last[u][0]:
            last[u] = (float(t), i)
    assert {u: i for u, (_t, i) in last.items()} == split["test_split"]

    out = tmp_path / "zoo.json"
    E.zoo_worker(argparse.Namespace(threads=1, repeats=1, workdir=str(tmp_path), json=str(out)))
    zoo = json.loads(out.read_text(encoding="utf-8"))
    assert zoo["n_test"] == 40 and len(zoo["wall_s"]) == 1 and zoo["wall_s"][0] > 0
    assert 0.0 <= zoo["metrics"]["test/recall@10"] <= 1.0

    fake_rb = dict(zoo, framework="RecBole", wall_s=[4 * zoo["wall_s"][0]], cpu_s=[4 * zoo["cpu_s"][0]], batches=1)
    md = E.render(dict(info=dict(date="d", git_commit="c", nproc=2, cpu="cpu", platform="p", python="3", torch="t",
                                 torch_threads=1, loadavg="0 0 0", machine_free_flag=True, free_g=""),
                       command="cmd", users_arg=None, split={k: v for k, v in split.items() if k != "test_split"},
                       split_ok=True, targets_differ=0, runs={"recbole": [fake_rb], "zoo": [zoo]}, loads=["0 0 0"],
                       rounds=1, repeats=1, threads=1))
    assert "**4.00x**" in md and "**identical**" in md and "40 users" in md
