"""Length-ordered evaluation and padding trimming: exact, fewer columns on sparse data."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from datamodules import SequentialDataModule
from zoo.models.base import SequentialRecommender
from zoo.models.sasrec import SASRec
from zoo.modules.embeddings import LearnedPositions

MAX_LEN = 12


@pytest.fixture()
def dm(tmp_path: Path) -> SequentialDataModule:
    """30 users with 4..20 interactions over 25 items (histories shorter and longer than max_len)."""
    rng = np.random.default_rng(0)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(30):
        n = int(rng.integers(4, 21))
        items = rng.choice(np.arange(100, 125), size=n, replace=False)
        lines += [f"u{u}\t{i}\t{1000 + 10 * t}" for t, i in enumerate(items)]
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "tiny.inter").write_text("\n".join(lines) + "\n", encoding="utf-8")
    d = SequentialDataModule(format="atomic", paths={"path": str(tmp_path / "raw")}, name="tiny",
                             cache_dir=str(tmp_path / "c"), k_core=1, max_len=MAX_LEN, eval_batch_size=8)
    d.setup("fit")
    return d


def test_eval_sets_are_length_ordered_permutations_and_predictions_keep_user_order(dm):
    for st in ("val", "test"):
        ds = dm.eval_sets[st]
        lens = np.minimum(ds.end - ds.start, MAX_LEN)
        assert (np.diff(lens) >= 0).all()  # short histories first
        assert sorted(ds.user.tolist()) == list(range(30))
    p = dm.predict_set
    assert p.user.tolist() == sorted(p.user.tolist())
    by_user = {int(u): (int(s), int(e)) for u, s, e in zip(p.user, p.start, p.end)}
    te = dm.eval_sets["test"]
    assert all(by_user[int(u)] == (int(s), int(e)) for u, s, e in zip(te.user, te.start, te.end))


def test_slot_positions_are_right_aligned_in_the_max_len_window():
    pos = LearnedPositions(6, 4, index="slot")
    seq = torch.tensor([[0, 0, 3, 4, 5, 6]])
    assert pos.positions(seq).tolist() == [[0, 1, 2, 3, 4, 5]]
    assert pos.positions(seq[:, 2:]).tolist() == [[2, 3, 4, 5]]  # the same slots without the pads


@pytest.mark.parametrize("position_index", ["slot", "recent", "oldest"])
def test_trimming_leaves_sasrec_exact(dm, position_index):
    torch.manual_seed(0)
    model = SASRec(num_items=dm.num_items, d=16, n_heads=2, max_len=MAX_LEN, dropout=0.0, position_index=position_index)
    model.eval()
    batch = next(iter(dm.test_dataloader()))  # the shortest histories: most columns are padding
    trimmed = model.trim_padding(batch)
    assert trimmed["item_seq"].shape[1] == int(batch["seq_len"].max()) < MAX_LEN
    assert (trimmed["item_seq"] > 0).sum() == (batch["item_seq"] > 0).sum()  # no real item dropped
    with torch.no_grad():
        torch.testing.assert_close(model.user_representation(trimmed), model.user_representation(batch),
                                   rtol=1e-5, atol=1e-6)

    def test_metrics(pad_invariant: bool) -> dict[str, float]:
        type(model).pad_invariant = pad_invariant
        try:
            tr = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
            return tr.test(model, datamodule=dm, verbose=False)[0]
        finally:
            type(model).pad_invariant = True

    assert test_metrics(True) == pytest.approx(test_metrics(False), abs=1e-7)


def test_models_that_are_not_declared_invariant_see_the_full_batch(dm):
    class Plain(SequentialRecommender):
        pass

    batch = next(iter(dm.test_dataloader()))
    assert Plain.trim_padding(Plain.__new__(Plain), batch) is batch
