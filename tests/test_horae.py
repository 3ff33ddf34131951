"""HORAE (zoo/models/horae.py) on a tiny config: MIRACLE + time intervals + interest refinement."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import make_batch
from model_checks import (
    assert_finite_with_heavy_padding_and_equal_times,
    assert_checkpoint_round_trip,
    assert_one_step_lowers_loss,
    assert_scores_shape,
    assert_switch_changes,
)
from test_miracle import (
    L,
    N_ITEMS,
    check_candidates_follow_score_with_id,
    check_freeze_keeps_frozen_fixed,
    check_load_pretrained,
    long_batch,
    make_model,
)

from zoo.models.horae import HORAE
from zoo.models.miracle import MIRACLE

D, DAY = 16, 86400


def make(**kw) -> HORAE:
    return make_model(HORAE, **kw)


def test_horae_extends_miracle():
    assert issubclass(HORAE, MIRACLE)


def test_shapes_of_every_intermediate():
    model = make(num_capsules=4).eval()
    batch = make_batch(L=L, num_items=N_ITEMS)
    B = batch["item_seq"].shape[0]
    adj, tgt = model.time_bins(batch)
    assert adj.shape == tgt.shape == (B, L) and adj.dtype == torch.long
    assert (adj[batch["item_seq"] == 0] == 13).all() and (tgt[batch["item_seq"] == 0] == 13).all()
    enc_t, caps_t = model._temporal_inputs(batch)
    assert enc_t.shape == caps_t.shape == (B, L, D)  # t_i (Eq. 6) and t~_i (Eq. 16)
    state = model.forward_interests(batch)
    assert state.x.shape == state.h.shape == (B, L, D)
    assert state.caps.s.shape == (B, L, 4) and state.caps.o.shape == (B, L) and state.caps.q.shape == (B, L, D)
    assert state.pre_interests.shape == state.interests.shape == (B, 4, D)
    ref = state.refinement
    assert ref.f0.shape == ref.h_bar.shape == ref.h_hat.shape == (B, L, D)
    assert ref.last_pos.shape == (B, 4)
    # F0 holds the pre-refined capsule each item activated (Eq. 23); U_bar reads the last position (Eq. 29)
    b, i = 0, L - 1
    torch.testing.assert_close(ref.f0[b, i], state.pre_interests[b, state.caps.assign[b, i]])
    j = state.caps.assign[b, i]
    assert ref.last_pos[b, j] == i
    torch.testing.assert_close(state.interests[b, j], ref.h_hat[b, i])
    assert (state.interests.norm(dim=-1)[~state.active] == 0).all()  # inactive: zero vectors
    assert ((ref.last_pos >= 0) == state.active).all()
    assert_scores_shape(model, batch, N_ITEMS)


def test_time_bins_from_a_batch_golden():
    model = make().eval()
    t0 = 1_500_000_000
    batch = make_batch(B=1, L=L, num_items=N_ITEMS, min_len=L)
    batch["item_seq"][0, :5] = 0
    days = torch.tensor([0, 0, 0, 0, 0, 0, 1, 15, 75, 2000])  # last five are real
    batch["time_seq"] = torch.where(batch["item_seq"] > 0, t0 + days * DAY, 0)
    batch["target_time"] = torch.tensor([t0 + 2002 * DAY])
    adj, tgt = model.time_bins(batch)
    # adjacent gaps: 1, 14, 60, 1925, 2 days; the last one uses the target time
    assert adj[0].tolist() == [13] * 5 + [1, 5, 7, 12, 2]
    # target gaps: 2002, 2001, 1987, 1927, 2 days -> beyond 5 years = bin 12 (paper)
    assert tgt[0].tolist() == [13] * 5 + [12, 12, 12, 12, 2]
    code = make(overflow_to_pad=True)
    adj_c, tgt_c = code.time_bins(batch)
    assert adj_c[0].tolist() == [13] * 5 + [1, 5, 7, 13, 2] and tgt_c[0, 5:].tolist() == [13, 13, 13, 13, 2]
    leak_free = make(target_time_source="last_history")
    adj_l, tgt_l = leak_free.time_bins(batch)
    assert adj_l[0, -1] == 0 and tgt_l[0, 5:].tolist() == [12, 12, 12, 12, 0]  # gaps to day 2000


def test_target_timestamp_is_an_input_unless_switched_off():
    batch = make_batch(L=L, num_items=N_ITEMS)
    later = dict(batch, target_time=batch["target_time"] + 400 * DAY)
    assert_switch_changes(lambda **kw: make(**kw), later, {"target_time_source": "last_history"}, "scores")
    for source, changes in (("target", True), ("last_history", False)):
        model = make(target_time_source=source).eval()
        with torch.no_grad():
            a = model.score_all(model.user_representation(batch))
            b = model.score_all(model.user_representation(later))
        assert (not torch.allclose(a, b)) == changes


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_loss_terms(stage):
    model = make(stage=stage).train()
    terms = model.training_loss(long_batch())
    pre = {"interest_cl", "intra", "pre_post"} if stage == "pretrain" else set()
    assert set(terms) == {"rec", "balance", "orthogonality"} | pre


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_finite_with_heavy_left_padding_and_equal_timestamps(stage):
    assert_finite_with_heavy_padding_and_equal_times(make(stage=stage, intra_mode="code"), L, N_ITEMS)


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_one_step_lowers_loss(stage):
    assert_one_step_lowers_loss(make(stage=stage), long_batch(), steps=3)


def test_checkpoint_round_trip(tmp_path):
    assert_checkpoint_round_trip(make(stage="finetune"), make_batch(L=L, num_items=N_ITEMS), tmp_path)


def test_pre_post_terms_are_log2_when_refinement_is_identity():
    # refiner and gate off, nothing masked: U_bar = U = anchor, so each sigmoid term is log 2
    model = make(refiner=False, fusion_gate=False, mask_ratio=0.0, num_capsules=4).eval()
    batch = long_batch()
    with torch.no_grad():
        state = model.forward_interests(batch)
        y = model.candidate_embeddings(batch["target"])
        got = model.pre_post_loss(batch, state, y)
        rec_pre = F.cross_entropy(model.in_batch_logits(state.pre_interests, state.active, y), torch.arange(len(y)))
    assert got.item() == pytest.approx(2 * math.log(2) + model.pre_post_beta * rec_pre.item(), rel=1e-5)


def test_l_aug_is_zero_without_maskable_items():
    terms = make(mask_min_len=100).train().training_loss(long_batch())
    assert terms["interest_cl"].item() == 0.0


@pytest.mark.parametrize(
    "switch, what, base",
    [
        # Table 8 rows
        ({"interest_intra": False}, "loss", {}),
        ({"interest_inter": False}, "loss", {}),
        ({"anchor_contrastive": False}, "loss", {}),
        ({"refiner": False}, "scores", {}),
        ({"fusion_gate": False}, "scores", {}),
        ({"rope": "none"}, "scores", {}),
        ({"adjacent_interval": False}, "scores", {}),
        ({"target_interval": False}, "scores", {}),
        ({"interest_contrastive": False}, "loss", {}),
        # official code (default) vs paper, and the code's bugs (rope qv, overflow_to_pad)
        ({"rope": "qv"}, "scores", {}),
        ({"contrastive_weight": 0.05}, "loss", {}),
        ({"intra_mode": "paper"}, "loss", {}),
        ({"anchor_capsule": "maxpool"}, "loss", {}),
        ({"refine_causal": False}, "scores", {}),
        ({"gru_zero_pads": True}, "scores", {}),
        ({"gate_backbone": "self_attention"}, "scores", {}),  # Fig. 7
        ({"orthogonality_weight": 10.0}, "loss", {}),
    ],
)
def test_switch_changes_forward_or_loss(switch, what, base):
    def build(**kw):
        m = make(**{"num_capsules": 4, **base, **kw})
        with torch.no_grad():  # spread items over capsules
            m.capsules.base_vectors.normal_(0, 1.0, generator=torch.Generator().manual_seed(0))
        return m

    assert_switch_changes(build, long_batch(), switch, what)


def test_anchor_mask_items_switch_changes_the_anchor():
    batch = long_batch()
    item_mask = torch.zeros_like(batch["item_seq"], dtype=torch.bool)
    item_mask[:, 3] = True
    anchors = []
    for flag in (False, True):
        torch.manual_seed(0)
        model = make(anchor_mask_items=flag).eval()
        with torch.no_grad():
            anchors.append(model.anchor_refinement(batch, model.forward_interests(batch), item_mask).interests)
    assert not torch.allclose(anchors[0], anchors[1])
    # the anchor differs from the post-refined interests: its F0 entries are [MASK_1]
    with torch.no_grad():
        state = model.forward_interests(batch)
    assert not torch.allclose(anchors[1], state.interests)


def test_overflow_switch_changes_scores_for_gaps_beyond_five_years():
    batch = long_batch()
    batch["target_time"] = batch["target_time"] + 3000 * DAY  # every d^t beyond 5 years
    assert_switch_changes(lambda **kw: make(**kw), batch, {"overflow_to_pad": True}, "scores")


def test_load_pretrained_matches_shared_keys(tmp_path):
    check_load_pretrained(tmp_path, HORAE)


def test_fine_tuning_with_recipe_freeze_list(tmp_path):
    check_freeze_keeps_frozen_fixed(tmp_path, "horae.yaml", HORAE)


def test_candidates_follow_score_with_id():
    check_candidates_follow_score_with_id(HORAE)


def test_intra_include_pads_counts_the_pads_like_the_authors_code():
    """intra_mode="code": the authors' per-capsule mean also averages the left pads' distances;
    the zoo leaves them out by default (a bug), the switch puts them back (only padded batches differ)."""
    def build(**kw):
        m = make(**{"num_capsules": 4, **kw})
        with torch.no_grad():
            m.capsules.base_vectors.normal_(0, 1.0, generator=torch.Generator().manual_seed(0))
        return m

    padded = make_batch(B=8, L=L, num_items=N_ITEMS, min_len=2)
    assert (padded["item_seq"] == 0).any()
    assert_switch_changes(build, padded, {"intra_include_pads": True}, "loss")
