"""Tiny-config tests of the baselines: SASRec, GRU4Rec, Pop (shared checks in model_checks.py)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_batch
from model_checks import (
    assert_checkpoint_round_trip,
    assert_one_step_lowers_loss,
    assert_scores_shape,
    assert_switch_changes,
)

from zoo.models.gru4rec import GRU4Rec
from zoo.models.pop import Pop
from zoo.models.sasrec import SASRec

N = 50
BUILDERS = {
    "sasrec": lambda **kw: SASRec(num_items=N, d=16, n_heads=2, max_len=10, **kw),
    "gru4rec": lambda **kw: GRU4Rec(num_items=N, d=16, d_hidden=16, **kw),
}


@pytest.mark.parametrize("name", BUILDERS)
def test_shapes_loss_step_and_round_trip(name, tmp_path):
    batch = make_batch(num_items=N)
    model = BUILDERS[name]()
    assert_scores_shape(model, batch, N)
    assert_one_step_lowers_loss(model, batch)
    assert_checkpoint_round_trip(model, batch, tmp_path)


def test_gru4rec_padding_never_enters_the_recurrence():
    """Five more left pads leave the GRU4Rec user unchanged (sequences are packed by length)."""
    torch.manual_seed(0)
    model = BUILDERS["gru4rec"]().eval()
    batch = make_batch(num_items=N, L=10, min_len=3)
    wider = dict(batch, item_seq=torch.cat([torch.zeros(8, 5, dtype=torch.long), batch["item_seq"]], 1))
    with torch.no_grad():
        a = model.user_representation(batch)
        b = model.user_representation(wider)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_sasrec_is_causal():
    """Changing an older item changes the user; the last position never sees the future."""
    torch.manual_seed(0)
    model = BUILDERS["sasrec"]().eval()
    batch = make_batch(num_items=N, min_len=10)
    with torch.no_grad():
        h = model.encode(batch["item_seq"])
        seq2 = batch["item_seq"].clone()
        seq2[:, -1] = seq2[:, -1] % N + 1  # change only the most recent item
        h2 = model.encode(seq2)
    torch.testing.assert_close(h[:, :-1], h2[:, :-1])  # earlier positions unaffected
    assert not torch.allclose(h[:, -1], h2[:, -1])


def test_sasrec_bce_switch_changes_loss():
    assert_switch_changes(BUILDERS["sasrec"], make_batch(num_items=N), {"loss": "bce"}, what="loss")


def test_sasrec_sampled_candidates_match_full_scores():
    torch.manual_seed(0)
    model = BUILDERS["sasrec"]().eval()
    batch = make_batch(num_items=N, n_neg=7)
    with torch.no_grad():
        u = model.user_representation(batch)
        cands = torch.cat([batch["target"][:, None], batch["neg_items"]], 1)
        torch.testing.assert_close(model.score_candidates(u, cands), model.score_all(u).gather(1, cands))


def test_pop_ranks_by_training_popularity():
    model = Pop(num_items=5)
    model.attach_side_info({"popularity": torch.tensor([0.0, 3, 9, 1, 0, 5])})
    batch = make_batch(B=2, num_items=5)
    scores = model.score_all(model.user_representation(batch))
    assert scores.shape == (2, 6)
    assert scores[0, 1:].argsort(descending=True).tolist() == [1, 4, 0, 2, 3]  # items 2, 5, 1, 3, 4
    with pytest.raises(ValueError, match="popularity"):
        Pop(num_items=5).attach_side_info({})


@pytest.mark.parametrize("name", BUILDERS)
def test_every_position_loss_with_windows(name):
    """With target_seq (train_sampling=windows) the loss covers every real position."""
    torch.manual_seed(0)
    batch = make_batch(num_items=N)
    target_seq = torch.randint(1, N + 1, batch["item_seq"].shape).masked_fill(batch["item_seq"] == 0, 0)
    windows = dict(batch, target_seq=target_seq)
    model = BUILDERS[name]()
    assert_one_step_lowers_loss(model, windows)
    model.eval()
    a = model.training_loss(windows)["rec"]
    b = model.training_loss(batch)["rec"]
    assert torch.isfinite(a) and not torch.allclose(a, b)
