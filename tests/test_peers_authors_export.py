"""The exporter of the authors' MIRACLE/HORAE format (benchmarks/peers/authors/export.py) on a tiny
synthetic MovieLens: what the authors' loader would read back equals the zoo's split exactly."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from benchmarks.peers.authors.export import export, read_features, read_inter, verify
from datamodules import SequentialDataModule


@pytest.fixture
def dm(ml_folder, tmp_path):
    d = SequentialDataModule(format="movielens", paths={"path": str(ml_folder)}, cache_dir=str(tmp_path / "cache"),
                             max_len=5)
    d.setup("fit")
    g = torch.Generator().manual_seed(0)
    d._text = torch.cat([torch.zeros(1, 6), torch.randn(d.num_items, 6, generator=g)])  # stands in for MiniLM
    return d


def _authors_read(path):
    """The authors' read_txt, restated: header skipped, item ids + 1 (MIRACLE's columns)."""
    rows = []
    with open(path) as f:
        f.readline()
        for line in f:
            c = line.strip("\n").split("\t")
            rows.append([int(c[0]), [int(i) + 1 for i in c[1].split(" ")], int(c[2]) + 1])
    return rows


@pytest.mark.parametrize("with_time", [False, True])
def test_export_equals_the_zoo_split(dm, tmp_path, with_time):
    m = export(dm, tmp_path / "out", "ML", with_time=with_time)
    folder = tmp_path / "out" / "ML"
    assert m["examples"] == {"train": len(dm.train_set), "valid": len(dm.eval_sets["val"]),
                             "test": len(dm.eval_sets["test"])}
    test = dm.eval_sets["test"][np.arange(len(dm.eval_sets["test"]))]
    got = read_inter(folder / "ML.test.inter", dm.max_len)
    assert np.array_equal(got["target"], test["target"].numpy())  # the test targets, identical
    assert np.array_equal(got["item_seq"], test["item_seq"].numpy())
    if with_time:
        assert np.array_equal(got["time_seq"], test["time_seq"].numpy())
        assert np.array_equal(got["target_time"], test["target_time"].numpy())
    else:
        # full histories are written; the authors' loader keeps the last max_len like the zoo
        rows = _authors_read(folder / "ML.test.inter")
        d = dm.data
        for (u, seq, tgt), s, e in zip(rows, dm.eval_sets["test"].start, dm.eval_sets["test"].end):
            assert seq == d.items[s:e].tolist() and tgt == d.items[e]
        assert max(max(max(s), t) for _, s, t in rows) <= dm.num_items
    feats = read_features(folder / "ML.feat1CLS")
    assert feats.shape == (dm.num_items, 6) and torch.equal(feats, dm._text[1:])
    uid = json.loads((folder / "user_ids.json").read_text())
    assert uid == dm.original_user_ids()


def test_verify_catches_a_changed_target(dm, tmp_path):
    export(dm, tmp_path / "out", "ML")
    path = tmp_path / "out" / "ML" / "ML.test.inter"
    lines = path.read_text().splitlines()
    c = lines[1].split("\t")
    c[2] = str((int(c[2]) + 1) % dm.num_items)
    lines[1] = "\t".join(c)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(AssertionError, match="column target differs from the zoo's test split"):
        verify(dm, tmp_path / "out" / "ML", "ML", with_time=False)


def test_feature_reader_refuses_other_objects(tmp_path):
    p = tmp_path / "x.feat1CLS"
    p.write_bytes(pickle.dumps({"not": "a tensor"}))
    with pytest.raises(ValueError, match="expected a tensor"):
        read_features(p)
    p.write_bytes(pickle.dumps(np.zeros(3)))
    with pytest.raises(pickle.UnpicklingError, match="unexpected"):
        read_features(p)
