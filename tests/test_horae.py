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
        ({"temporal_encoding": "relation_matrix"}, "scores", {}),  # Fig. 7
        ({"temporal_encoding": "hawkes"}, "scores", {}),  # Fig. 7
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


# ---------------------------------------------------------------------- Fig. 7: temporal encodings
ENCODINGS = ("binning", "relation_matrix", "hawkes")


@pytest.mark.parametrize("encoding", ["relation_matrix", "hawkes"])
@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_temporal_encoding_trains_a_step_and_ranks(encoding, stage):
    torch.manual_seed(0)
    model = make(stage=stage, temporal_encoding=encoding, num_capsules=4)
    batch = long_batch()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    loss = torch.stack(list(model.training_loss(batch).values())).sum()
    assert torch.isfinite(loss)
    opt.zero_grad()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    opt.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    if encoding == "relation_matrix":  # the interval K/V tables are learned
        assert {"time_embedding.key.weight", "time_embedding.value.weight"} <= moved
    else:  # THP's encoding has no parameters; D and D~ are gone
        assert not list(model.time_embedding.parameters()) and model.capsule_time_embedding is None
    model.eval()
    eval_batch = make_batch(L=L, num_items=N_ITEMS, seed=7)
    with torch.no_grad():
        model._eval_step(eval_batch, "test")
    metrics = model.metrics["test_full"].compute()
    assert metrics and all(torch.isfinite(v) and 0 <= v <= 1 for v in metrics.values())
    assert model.metrics["test_full"].count.item() == eval_batch["item_seq"].shape[0]


def test_temporal_encodings_feed_the_encoder_and_the_capsules_where_read():
    batch = make_batch(L=L, num_items=N_ITEMS)
    B = batch["item_seq"].shape[0]
    binning, relation, hawkes = (make(temporal_encoding=e).eval() for e in ENCODINGS)
    t, t_caps = binning._temporal_inputs(batch)
    assert t.shape == t_caps.shape == (B, L, D) and binning._attention_relation(batch) is None
    assert relation._temporal_inputs(batch) == (None, None)  # no t_i in Eq. 7, no t~_i in Eq. 16
    rk, rv = relation._attention_relation(batch)
    assert rk.shape == rv.shape == (B, L, L, D)  # every encoder layer's K/V additions
    z, z_caps = hawkes._temporal_inputs(batch)
    assert z.shape == (B, L, D) and z_caps is z and hawkes._attention_relation(batch) is None


def test_relation_matrix_embeds_the_hand_computed_intervals():
    model = make(temporal_encoding="relation_matrix", relation_max_interval=3).eval()
    t0 = 1_500_000_000
    batch = make_batch(B=1, L=L, num_items=N_ITEMS, min_len=L)
    batch["item_seq"][0, :L - 4] = 0
    days = torch.tensor([0] * (L - 4) + [0, 2, 3, 10])  # r_min = 1 day; 10 days -> k = 3
    batch["time_seq"] = torch.where(batch["item_seq"] > 0, t0 + days * DAY, 0)
    with torch.no_grad():
        rk, rv = model._attention_relation(batch)
    want = torch.tensor([[0, 2, 3, 3], [2, 0, 1, 3], [3, 1, 0, 3], [3, 3, 3, 0]])
    torch.testing.assert_close(rk[0, -4:, -4:], model.time_embedding.key.weight[want])
    torch.testing.assert_close(rv[0, -4:, -4:], model.time_embedding.value.weight[want])


def test_hawkes_encoding_of_a_hand_made_timestamp():
    model = make(temporal_encoding="hawkes", time_scale=DAY).eval()
    t0 = 1_500_000_000
    batch = make_batch(B=1, L=L, num_items=N_ITEMS, min_len=L)
    batch["item_seq"][0, :L - 3] = 0
    days = torch.tensor([0] * (L - 3) + [0, 2.5, 7]) * DAY  # the oldest real item is the origin
    batch["time_seq"] = torch.where(batch["item_seq"] > 0, t0 + days.long(), 987_654)
    z, _ = model._temporal_inputs(batch)
    t = 2.5  # days since the window's oldest item
    j = torch.arange(1, D + 1, dtype=torch.float64)
    want = [math.cos(t / 10000 ** ((jj - 1) / D)) if jj % 2 else math.sin(t / 10000 ** (jj / D)) for jj in j.tolist()]
    torch.testing.assert_close(z[0, -2], torch.tensor(want, dtype=torch.float32), rtol=0, atol=1e-6)
    assert (z[0, -3, 0::2] == 1).all() and (z[0, -3, 1::2] == 0).all()  # t = 0 at the origin
    assert (z[0, :L - 3] == 0).all()  # pads: no encoding


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_pad_timestamps_do_not_leak_into_real_positions(encoding):
    """With the default gate (its GRU reads the encoder's pad outputs too), changing only the pads'
    timestamps leaves the encoder's outputs at real positions and the interests unchanged."""
    model = make(temporal_encoding=encoding, num_capsules=4).eval()
    batch = make_batch(L=L, num_items=N_ITEMS, min_len=2)
    pads = batch["item_seq"] == 0
    assert pads.any()
    noisy = dict(batch, time_seq=torch.where(pads, torch.randint(0, 2_000_000_000, pads.shape), batch["time_seq"]))
    with torch.no_grad():
        a, b = model.forward_interests(batch), model.forward_interests(noisy)
    torch.testing.assert_close(a.h[~pads], b.h[~pads])
    torch.testing.assert_close(a.h, b.h)  # pad rows too: the gate GRU reads them
    torch.testing.assert_close(a.interests, b.interests)


@pytest.mark.parametrize("encoding", ["relation_matrix", "hawkes"])
def test_temporal_encoding_reads_gaps_not_the_calendar(encoding):
    """Both variants see time relative to the window: shifting every timestamp (and the target's)
    changes nothing, stretching one gap changes the scores."""
    model = make(temporal_encoding=encoding, num_capsules=4).eval()
    batch = long_batch()
    real = batch["item_seq"] > 0
    shifted = dict(batch, time_seq=torch.where(real, batch["time_seq"] + 400 * DAY, 0),
                   target_time=batch["target_time"] + 400 * DAY)
    stretched = dict(batch, time_seq=torch.where(real, batch["time_seq"], 0).clone())
    stretched["time_seq"][:, -1] += 90 * DAY  # the last gap of every user grows by 90 days
    with torch.no_grad():
        base, shift, stretch = (model.score_all(model.user_representation(x)) for x in (batch, shifted, stretched))
    torch.testing.assert_close(base, shift)
    assert not torch.allclose(base, stretch)


def test_temporal_encoding_is_validated():
    with pytest.raises(ValueError, match=r"temporal_encoding must be one of \('binning', 'relation_matrix', 'hawkes'\)"):
        make(temporal_encoding="relative")
    for encoding in ("relation_matrix", "hawkes"):
        for switch in ("adjacent_interval", "target_interval"):
            with pytest.raises(ValueError, match=f"temporal_encoding='{encoding}' uses neither"):
                make(temporal_encoding=encoding, **{switch: False})
    with pytest.raises(ValueError, match="relation_max_interval must be >= 1"):
        make(temporal_encoding="relation_matrix", relation_max_interval=0)


def test_relation_matrix_fine_tuning_freezes_its_interval_tables(tmp_path):
    """The recipe's freeze list names ``time_embedding``: the relation matrix's K/V tables are the
    temporal encoder the paper freezes (with D in the model)."""
    check_freeze_keeps_frozen_fixed(tmp_path, "horae.yaml", HORAE, temporal_encoding="relation_matrix")


@pytest.mark.parametrize("encoding", ["relation_matrix", "hawkes"])
def test_temporal_encoding_checkpoint_round_trip(encoding, tmp_path):
    assert_checkpoint_round_trip(make(stage="finetune", temporal_encoding=encoding), make_batch(L=L, num_items=N_ITEMS),
                                 tmp_path)
