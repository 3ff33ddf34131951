"""benchmarks/peers/export.py: the zoo's split written in ReChorus's and RecBole's formats round-trips
(every user's train items, valid and test targets equal the datamodule's), without the peers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.peers import export as E
from datamodules import SequentialDataModule


@pytest.fixture()
def dm(tmp_path: Path) -> SequentialDataModule:
    """A tiny real datamodule: 6 users, 4-9 interactions each, from a plain atomic file."""
    rng = np.random.default_rng(0)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(6):
        items = rng.choice(np.arange(100, 112), size=4 + u, replace=False)
        lines += [f"u{u}\t{i}\t{1000 + 10 * t}" for t, i in enumerate(items)]
    folder = tmp_path / "raw"
    folder.mkdir()
    (folder / "tiny.inter").write_text("\n".join(lines) + "\n", encoding="utf-8")
    d = SequentialDataModule(format="atomic", paths={"path": str(folder)}, name="tiny", cache_dir=str(tmp_path / "c"),
                             k_core=1, max_len=3)
    d.setup("fit")
    return d


def test_export_round_trips_and_targets_equal(dm, tmp_path):
    out = tmp_path / "peers"
    info = E.export(dm, out, dm.original_user_ids(), max_len=3, name="tiny")
    assert info["test_targets"] == 6
    assert {k: v for k, v in info.items() if k.endswith("_differing")} == {
        "rechorus_test_differing": 0, "recbole_test_differing": 0, "rechorus_valid_differing": 0,
        "recbole_valid_differing": 0}
    te, va = dm.eval_sets["test"], dm.eval_sets["val"]
    items = dm.data.items
    want_test = {int(u): int(items[e]) for u, e in zip(te.user, te.end)}
    want_valid = {int(u): int(items[e]) for u, e in zip(va.user, va.end)}
    assert E.read_rechorus_targets(out / "rechorus" / "tiny", "test") == want_test
    assert E.read_recbole_targets(out / "recbole" / "tiny", "tiny", "valid") == want_valid
    # ReChorus: every user's rows in position order give back the whole sequence (train, dev, test)
    seqs: dict[int, list[tuple[int, int]]] = {}
    for stage in ("train", "dev", "test"):
        with open(out / "rechorus" / "tiny" / f"{stage}.csv", encoding="utf-8") as f:
            r = csv.reader(f, delimiter="\t")
            assert next(r) == ["user_id", "item_id", "time"]
            for u, i, t in r:
                seqs.setdefault(int(u) - 1, []).append((int(t), int(i)))
    for u, s, e in zip(te.user, te.start, te.end):
        got = [i for _t, i in sorted(seqs[int(u)])]
        assert got == items[s : e + 1].tolist()
    # RecBole: the test row's history is the last max_len items before the target
    with open(out / "recbole" / "tiny" / "tiny.test.inter", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))[1:]
    start = dict(zip(te.user.tolist(), te.start.tolist()))
    end = dict(zip(te.user.tolist(), te.end.tolist()))
    for u, hist, _i in rows:
        s, e = start[int(u)], end[int(u)]
        assert [int(x) for x in hist.split()] == items[max(s, e - 3) : e].tolist()
    idmap = json.loads((out / "id_map.json").read_text(encoding="utf-8"))
    assert [m["original"] for m in idmap["users"]] == [dm.original_user_ids()[u] for u in te.user]
    with np.load(out / "split.npz", allow_pickle=False) as z:
        assert z["test_target"].tolist() == [want_test[int(u)] for u in z["user"]]


def test_count_differing_sees_a_changed_target(dm, tmp_path):
    split = E.split_from_datamodule(dm)
    targets = dict(zip(split["user"].tolist(), split["test_target"].tolist()))
    assert E.count_differing(split, targets) == 0
    u0 = next(iter(targets))
    targets[u0] += 1
    assert E.count_differing(split, targets) == 1
    del targets[u0]
    assert E.count_differing(split, targets) == 1
