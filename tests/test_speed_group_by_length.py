"""benchmarks/speed_group_by_length.py on a tiny log: both workers train through ``Trainer.fit``
(the switch on trims SASRec's batches) and the report states the ratio."""

from __future__ import annotations

import json

import numpy as np

from benchmarks import speed_group_by_length as G
from datamodules.atomic import export_atomic


def test_workers_and_report(tmp_path):
    rng = np.random.default_rng(0)
    user, item, time = [], [], []
    for u in range(60):  # 6-40 interactions: most max_len-50 positions are padding, as on Amazon data
        n = int(rng.integers(6, 41))
        user += [u] * n
        item += (rng.choice(80, size=n, replace=False) + 1).tolist()
        time += list(range(1000, 1000 + n))
    export_atomic(np.array(user), np.array(item), np.array(time), tmp_path / "Office", "Office")
    inter = tmp_path / "Office" / "Office.inter"
    runs = {}
    for side in ("off", "on"):
        js = tmp_path / f"{side}.json"
        G.worker(dict(model="SASRec", inter=str(inter), cache=str(tmp_path / "cache"), group=side == "on",
                      train_steps=5, json=str(js), text_features=None))
        runs[side] = [dict(json.loads(js.read_text(encoding="utf-8")), load="0 0 0 → 0 0 0")]
        assert len(runs[side][0]["cpu"]) == 5 and runs[side][0]["pad_invariant"] is True
    # make the ratio known: the "on" side twice as fast on every step
    runs["on"][0]["cpu"] = [x / 2 for x in runs["off"][0]["cpu"]]
    runs["on"][0]["wall"] = [x / 2 for x in runs["off"][0]["wall"]]
    md = G.render(dict(info=dict(date="d", git_commit="c", nproc=2, cpu="cpu", platform="p", python="3", torch="t",
                                 torch_threads=1, loadavg="0 0 0", machine_free_flag=True, free_g=""),
                       command="cmd", results={"SASRec": runs}, train_steps=5, rounds=1))
    assert "| SASRec | windows, 50 | yes |" in md and "**2.00x**" in md and "| 2.00 |" in md
