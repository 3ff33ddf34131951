"""TiSASRec (zoo/models/tisasrec.py): the relation and position terms through the attention against a
pair-by-pair computation, training and both evaluation paths, padding, time-shift invariance, the
per-user time scale, switches, errors and checkpoints (shared checks in model_checks.py)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_batch
from model_checks import (
    assert_checkpoint_round_trip,
    assert_finite_with_heavy_padding_and_equal_times,
    assert_one_step_lowers_loss,
    assert_scores_shape,
)

from zoo.models.sasrec import SASRec
from zoo.models.tisasrec import TiSASRec

N, B, L, DAY, T0 = 50, 8, 10, 86400, 1_500_000_000


def make(**kw) -> TiSASRec:
    kw = {"num_items": N, "d": 16, "n_layers": 2, "n_heads": 2, "max_len": 14, **kw}
    return TiSASRec(**kw)


def day_batch(seed: int = 0, min_len: int = 2) -> dict[str, torch.Tensor]:
    """make_batch with gaps of 1-5.9 days, so no interval is clipped at k=256 with a unit of a day."""
    batch = make_batch(B=B, L=L, num_items=N, seed=seed, min_len=min_len)
    g = torch.Generator().manual_seed(seed + 100)
    gaps = torch.randint(1, 6, (B, L), generator=g) * DAY + torch.randint(0, 9 * DAY // 10, (B, L), generator=g)
    real = batch["item_seq"] > 0
    batch["time_seq"] = (T0 + gaps.cumsum(1)).masked_fill(~real, 0)
    batch["target_time"] = batch["time_seq"][:, -1] + DAY
    return batch


def scales(batch: dict[str, torch.Tensor], unit: int = DAY) -> dict[str, torch.Tensor]:
    """Side info for the batch's users: origin = each row's oldest real timestamp, a common unit."""
    real = batch["item_seq"] > 0
    origin = batch["time_seq"].masked_fill(~real, torch.iinfo(torch.long).max).amin(1)
    return {"user_time_origin": origin, "user_time_unit": torch.full((B,), unit)}


def loud(model: TiSASRec, std: float = 0.5) -> TiSASRec:
    """Every parameter redrawn at N(0, std^2): at the init's 0.02 the attention sub-layer is a small
    correction to its residual, so a wrong relation term would hide inside a test's tolerance."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def user_model(batch: dict[str, torch.Tensor], **kw) -> TiSASRec:
    torch.manual_seed(0)
    model = make(**kw)
    model.attach_side_info(scales(batch))
    return model.eval()


@pytest.mark.parametrize("rounding", ["round", "floor"])  # whole multiples of r_min here: the same R
def test_attention_equals_the_pair_by_pair_formula(rounding):
    """One layer, hand-written intervals: e_ij = q_i (k_j + E^K_R[r_ij] + P^K_j) / sqrt(d_h) over real
    j <= i, z_i = sum_j a_ij (v_j + E^V_R[r_ij] + P^V_j), per head; then projection, residual,
    LayerNorm and the feed-forward.  Positions are the window's slots (max_len = L here)."""
    torch.manual_seed(0)
    Lw, d, H = 4, 8, 2
    dh = d // H
    model = TiSASRec(num_items=N, d=d, n_layers=1, n_heads=H, max_len=Lw, time_span=3,
                     interval_rounding=rounding).eval()
    loud(model)
    item_seq = torch.tensor([[0, 5, 6, 7], [1, 2, 3, 4]])
    time_seq = torch.tensor([[0, T0, T0 + 2 * DAY, T0 + 7 * DAY], [T0, T0 + 3600, T0 + 5400, T0 + 9000]])
    # user 0: r_min = 1 day -> |0-2| = 2, |0-7| = 7 -> 3 (k), |2-7| = 5 -> 3;  user 1: r_min = 1800 s
    R = torch.tensor([
        [[0, 0, 0, 0], [0, 0, 2, 3], [0, 2, 0, 3], [0, 3, 3, 0]],
        [[0, 2, 3, 3], [2, 0, 1, 3], [3, 1, 0, 2], [3, 3, 2, 0]],
    ])
    model.attach_side_info({"user_time_origin": torch.tensor([T0, T0]), "user_time_unit": torch.tensor([DAY, 1800])})
    batch = {"item_seq": item_seq, "time_seq": time_seq, "user": torch.tensor([0, 1])}
    with torch.no_grad():
        got = model.sequence_states(batch)  # [2, 4, d]
        E = model.emb_norm(model.item_emb(item_seq))  # [2, 4, d] (no input position)
        att = model.encoder.layers[0].attention
        q, k, v = att.query(E), att.key(E), att.value(E)
        EK, EV = model.relation_embedding.key.weight, model.relation_embedding.value.weight
        PK, PV = model.pos_key.embedding.weight, model.pos_value.embedding.weight
        ctx = torch.zeros(2, Lw, d)
        for b in range(2):
            for head in range(H):
                sl = slice(head * dh, (head + 1) * dh)
                for i in range(Lw):
                    keys = [j for j in range(i + 1) if item_seq[b, j] > 0]
                    if not keys:
                        continue
                    e = torch.tensor([float(q[b, i, sl] @ (k[b, j, sl] + EK[R[b, i, j], sl] + PK[j, sl])) / math.sqrt(dh)
                                      for j in keys])
                    a = torch.softmax(e, 0)
                    ctx[b, i, sl] = sum(a[n] * (v[b, j, sl] + EV[R[b, i, j], sl] + PV[j, sl]) for n, j in enumerate(keys))
        want = model.encoder.layers[0].feed_forward(att.layer_norm(att.dense(ctx) + E))
    real = item_seq > 0
    torch.testing.assert_close(got[real], want[real], rtol=1e-5, atol=1e-5)


def test_intervals_and_positions_reach_the_output():
    """Each of the four K/V tables (intervals, positions) reaches the user: zeroing it changes the output."""
    batch = day_batch()
    model = loud(user_model(batch))
    with torch.no_grad():
        base = model.user_representation(batch)
        for table in (model.relation_embedding.key, model.pos_key.embedding, model.relation_embedding.value,
                      model.pos_value.embedding):
            saved = table.weight.clone()
            table.weight.zero_()
            assert not torch.allclose(model.user_representation(batch), base, atol=1e-2), table
            table.weight.copy_(saved)
        torch.testing.assert_close(model.user_representation(batch), base)
    assert not hasattr(model, "pos_emb")  # no input position embedding (SASRec's is removed)


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_one_step_lowers_the_loss_and_ranks(loss, tmp_path):
    batch = day_batch()
    kw = {"loss": loss, "train_negatives_exclude": "history"} if loss == "bce" else {}
    torch.manual_seed(0)
    model = make(**kw)
    info = scales(batch)
    if loss == "bce":  # the code's negatives: outside the user's training items
        info |= {"train_history_ptr": torch.arange(0, 81, 10), "train_history_items": torch.arange(1, 11).repeat(8)}
    model.attach_side_info(info)
    assert_scores_shape(model, batch, N)
    assert_one_step_lowers_loss(model, batch)
    windows = dict(batch, target_seq=torch.randint(1, N + 1, (B, L)).masked_fill(batch["item_seq"] == 0, 0))
    assert_one_step_lowers_loss(model, windows)
    assert torch.isfinite(model.training_loss(windows)["rec"])


def test_full_ranking_and_sampled_evaluation_run_and_agree():
    batch = day_batch()
    sampled = dict(batch, neg_items=torch.randint(1, N + 1, (B, 7), generator=torch.Generator().manual_seed(1)))
    model = user_model(batch, topk=(5, 10))
    with torch.no_grad():
        model._eval_step(batch, "test")
        model._eval_step(sampled, "test")
        u = model.user_representation(batch)
        cands = torch.cat([batch["target"][:, None], sampled["neg_items"]], 1)
        torch.testing.assert_close(model.score_candidates(u, cands), model.score_all(u).gather(1, cands))
    for key in ("test_full", "test_sampled"):
        values = model.metrics[key].compute()
        assert model.metrics[key].count.item() == B and all(torch.isfinite(v) for v in values.values()), key
    assert_finite_with_heavy_padding_and_equal_times(make(interval_scale="window"), L, N)


@pytest.mark.parametrize("kw", [{}, {"interval_scale": "window"}, {"interval_scale": "window", "interval_rounding": "floor"}])
def test_pads_and_pad_timestamps_never_reach_real_positions(kw):
    batch = day_batch(min_len=3)
    model = user_model(batch, **kw)
    real = batch["item_seq"] > 0
    wider = dict(batch, item_seq=torch.cat([torch.zeros(B, 3, dtype=torch.long), batch["item_seq"]], 1),
                 time_seq=torch.cat([torch.full((B, 3), 7), batch["time_seq"]], 1))
    noisy = dict(batch, time_seq=torch.where(real, batch["time_seq"], torch.randint(0, 2 * T0, (B, L))))
    with torch.no_grad():
        h = model.sequence_states(batch)
        torch.testing.assert_close(model.sequence_states(noisy)[real], h[real], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.sequence_states(wider)[:, 3:][real], h[real], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.user_representation(wider), model.user_representation(batch), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw", [{}, {"interval_rounding": "floor"}, {"interval_scale": "window"},
                                {"interval_scale": "window", "interval_rounding": "floor"}])
def test_time_shifts_change_nothing_but_a_changed_gap_does(kw):
    batch = day_batch()
    model = user_model(batch, **kw)
    real = batch["item_seq"] > 0
    shift = 12_345_678
    shifted = dict(batch, time_seq=torch.where(real, batch["time_seq"] + shift, 0))
    shifted_scales = scales(batch)
    shifted_scales["user_time_origin"] = shifted_scales["user_time_origin"] + shift  # the user's own history moves too
    twin = user_model(batch, **kw)
    twin.attach_side_info(shifted_scales)
    gap = batch["time_seq"].clone()
    gap[:, -1] += 3 * DAY  # the most recent item three days later: its intervals to every older item grow by 3
    changed = dict(batch, time_seq=gap)
    with torch.no_grad():
        u = model.user_representation(batch)
        torch.testing.assert_close(twin.user_representation(shifted), u, rtol=1e-5, atol=1e-5)
        moved = model.user_representation(changed)
        older = model.sequence_states(changed)[:, :-1]
    many = batch["seq_len"] > 1  # a lone item has no pair to see the change
    assert not torch.allclose(moved[many], u[many], atol=1e-4)
    if kw.get("interval_scale", "user") == "user":  # causal: earlier rows see no change (the window's own
        torch.testing.assert_close(older, model.sequence_states(batch)[:, :-1])  # r_min reads every timestamp)


def test_the_user_scale_is_read_by_user_id_and_differs_from_the_window():
    batch = day_batch()
    model = user_model(batch)
    info = scales(batch)
    info["user_time_unit"] = info["user_time_unit"].clone()
    info["user_time_unit"][0] = 3 * DAY  # user 0's own r_min: three days
    with torch.no_grad():
        a = model.user_representation(batch)
        model.attach_side_info(info)
        b = model.user_representation(batch)
    assert not torch.allclose(a[0], b[0], atol=1e-4) and torch.allclose(a[1:], b[1:])
    torch.manual_seed(0)
    window = make(interval_scale="window").eval()
    window.load_state_dict(model.state_dict())
    long_gaps = dict(batch, time_seq=torch.where(batch["item_seq"] > 0, T0 + (batch["time_seq"] - T0) * 7, 0))
    with torch.no_grad():  # the window's minimum grows with the gaps, the user's unit does not
        assert not torch.allclose(model.user_representation(long_gaps), window.user_representation(long_gaps), atol=1e-4)


def test_rounding_and_time_span_switches_change_the_scores():
    from zoo.modules.temporal import relation_intervals

    batch = day_batch()
    real, info = batch["item_seq"] > 0, scales(batch)
    unit, origin = info["user_time_unit"], info["user_time_origin"]
    rounded = relation_intervals(batch["time_seq"], real, 256, unit, origin)
    assert not torch.equal(rounded, relation_intervals(batch["time_seq"], real, 256, unit))  # the forms differ here
    assert int(rounded.max()) > 2  # and time_span=2 clips some
    a = user_model(batch)
    b = user_model(batch, interval_rounding="floor")
    c = user_model(batch, time_span=2)
    with torch.no_grad():
        ua = a.user_representation(batch)
        assert not torch.allclose(ua, b.user_representation(batch), atol=1e-4)
        c.relation_embedding.key.weight.copy_(a.relation_embedding.key.weight[:3])
        c.relation_embedding.value.weight.copy_(a.relation_embedding.value.weight[:3])
        assert not torch.allclose(ua, c.user_representation(batch), atol=1e-4)


def test_is_causal_and_reads_the_most_recent_state():
    batch = day_batch(min_len=L)
    model = user_model(batch)
    seq2 = batch["item_seq"].clone()
    seq2[:, -1] = seq2[:, -1] % N + 1
    with torch.no_grad():
        h = model.sequence_states(batch)
        h2 = model.sequence_states(dict(batch, item_seq=seq2))
        torch.testing.assert_close(model.user_representation(batch), h[:, -1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h[:, :-1], h2[:, :-1])
    assert not torch.allclose(h[:, -1], h2[:, -1])


def test_clear_errors():
    with pytest.raises(ValueError, match="interval_scale"):
        make(interval_scale="global")
    with pytest.raises(ValueError, match="interval_rounding"):
        make(interval_rounding="ceil")
    with pytest.raises(ValueError, match="time_span"):
        make(time_span=0)
    batch = day_batch()
    with pytest.raises(RuntimeError, match="interval_scale: window"):
        make().user_representation(batch)
    with pytest.raises(ValueError, match="user_time_unit"):
        make().attach_side_info({"popularity": torch.ones(N + 1)})
    model = make()
    model.attach_side_info(scales(batch))
    with pytest.raises(ValueError, match="beyond"):
        model.user_representation(dict(batch, user=batch["user"] + B))
    make(interval_scale="window").attach_side_info({})  # the window scale needs no side info


def test_checkpoint_round_trip_keeps_the_side_info_out(tmp_path):
    batch = day_batch()
    assert_checkpoint_round_trip(make(interval_scale="window"), batch, tmp_path)
    model = user_model(batch)
    state = model.state_dict()
    assert not any(k.startswith("user_time") for k in state)  # attached again at every setup
    clone = TiSASRec(**dict(model.hparams))
    clone.attach_side_info(scales(batch))
    clone.load_state_dict(state)
    clone.eval()
    with torch.no_grad():
        torch.testing.assert_close(clone.user_representation(batch), model.user_representation(batch))


def test_shares_sasrec_but_its_own_tables():
    """Subclass of SASRec (loss switch, negatives, evaluation); its extra parameters are the four tables."""
    torch.manual_seed(0)
    sas, ti = SASRec(num_items=N, d=16, max_len=14), make(n_layers=2, interval_scale="window")
    extra = set(ti.state_dict()) - set(sas.state_dict())
    assert extra == {"pos_key.embedding.weight", "pos_value.embedding.weight", "relation_embedding.key.weight",
                     "relation_embedding.value.weight"}
    assert set(sas.state_dict()) - set(ti.state_dict()) == {"pos_emb.embedding.weight"}
    assert ti.relation_embedding.key.weight.shape == (257, 16)
