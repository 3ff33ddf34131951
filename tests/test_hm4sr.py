"""HM4SR tiny-config tests (d=16, 50 items, L=10, k1=k2=2, 5 categories)."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import make_batch
from model_checks import (
    assert_checkpoint_round_trip,
    assert_one_step_lowers_loss,
    assert_scores_shape,
    assert_switch_changes,
    total_loss,
)

from zoo.models.hm4sr import HM4SR, interval_table_size, placeholder_positions

N, L, D, TEXT_DIM, IMAGE_DIM, C = 50, 10, 16, 12, 8, 5


def side_info(seed: int = 0, keys: tuple[str, ...] = ("text", "image", "category_multi_hot")) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(N + 1, TEXT_DIM, generator=g)
    image = torch.randn(N + 1, IMAGE_DIM, generator=g)
    multi_hot = (torch.rand(N + 1, C + 1, generator=g) < 0.4).float()
    text[0], image[0], multi_hot[0], multi_hot[:, 0] = 0, 0, 0, 0
    info = {"text": text, "image": image, "category_multi_hot": multi_hot}
    return {k: info[k] for k in keys}


def make_model(side: dict | None = None, **overrides) -> HM4SR:
    args = dict(
        num_items=N, d=D, d_ff=32, max_len=L, text_dim=TEXT_DIM, image_dim=IMAGE_DIM, num_categories=C,
        n_interactive_experts=2, n_temporal_experts=2, num_interval_buckets=3000,
    )
    args.update(overrides)
    model = HM4SR(**args)
    model.attach_side_info(side_info() if side is None else side)
    return model


def equal_time_batch() -> dict[str, torch.Tensor]:
    batch = make_batch(B=8, L=L, num_items=N, seed=2)
    batch["time_seq"] = torch.where(batch["item_seq"] > 0, 1_400_000_000, 0)
    return batch


def left_padded_batch() -> dict[str, torch.Tensor]:
    """Heavy left padding: every history holds one to three items out of ten."""
    batch = make_batch(B=8, L=L, num_items=N, seed=3)
    lens = torch.tensor([1, 1, 2, 1, 3, 1, 2, 1])
    keep = torch.arange(L)[None, :] >= L - lens[:, None]  # [B, L]
    item_seq = torch.randint(1, N + 1, (8, L), generator=torch.Generator().manual_seed(4)).masked_fill(~keep, 0)
    time_seq = (1_500_000_000 + torch.arange(L) * 3600).expand(8, L).masked_fill(~keep, 0)
    batch.update(item_seq=item_seq, time_seq=time_seq, seq_len=lens, history_items=item_seq.clone())
    return batch


def test_shapes_of_every_branch_and_moe(batch):
    model = make_model().eval()
    B = batch["item_seq"].shape[0]
    with torch.no_grad():
        out = model.encode(batch)
    assert model.modalities == ("id", "txt", "img")
    for key in ("x", "e", "e_inter", "x_temp"):
        for m in model.modalities:
            assert out[key][m].shape == (B, L, D), (key, m)
    for m in model.modalities:
        assert out["h"][m].shape == (B, D)
        assert out["interactive_gates"][m].shape == (B, L, 2)
    assert out["r"]["interval"].shape == out["r"]["absolute"].shape == (B, L, D)
    assert out["temporal_gates"].shape == (B, L, 2)
    assert model.user_representation(batch).shape == (B, 3 * D)
    assert model.item_table().shape == (N + 1, 3 * D)
    scores = assert_scores_shape(model, batch, N)
    # Eq. 19: the score is the sum of the three per-modality dot products with initial representations
    items = torch.arange(N + 1)
    x = model.initial_representations(items)
    with torch.no_grad():
        manual = sum(out["h"][m] @ x[m].T for m in model.modalities)
    torch.testing.assert_close(scores, manual)
    cands = torch.randint(1, N + 1, (B, 7))
    with torch.no_grad():
        torch.testing.assert_close(model.score_candidates(model.user_representation(batch), cands), scores.gather(1, cands))


def test_gates_sum_to_one(batch):
    model = make_model().eval()
    with torch.no_grad():
        out = model.encode(batch)
    for g in list(out["interactive_gates"].values()) + [out["temporal_gates"]]:
        assert (g >= 0).all()
        torch.testing.assert_close(g.sum(-1), torch.ones(g.shape[:-1]))


@pytest.mark.parametrize("make", [lambda: make_batch(B=8, L=L, num_items=N), left_padded_batch, equal_time_batch])
def test_finite_losses_and_no_nan_at_pads(make):
    batch = make()
    model = make_model()
    model.train()
    terms = model.training_loss(batch)
    assert set(terms) == {"rec", "cp", "idcl", "pcl"}
    loss = total_loss(model, batch)
    loss.backward()
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name
    with torch.no_grad():
        out = model.eval().encode(batch)
    for m in model.modalities:  # pad positions included
        assert torch.isfinite(out["x_temp"][m]).all()
        assert torch.isfinite(out["h"][m]).all()
    assert torch.isfinite(out["r"]["interval"]).all() and torch.isfinite(out["r"]["absolute"]).all()


def test_one_step_lowers_loss(batch):
    assert_one_step_lowers_loss(make_model(), batch)


def test_checkpoint_round_trip(batch, tmp_path):
    assert_checkpoint_round_trip(make_model(), batch, tmp_path)
    assert_checkpoint_round_trip(make_model(temporal_experts_trainable=False), batch, tmp_path)


@pytest.mark.parametrize(
    "switch, what",
    [
        ({"use_interactive_moe": False}, "scores"),
        ({"use_temporal_moe": False}, "scores"),
        ({"time_embeddings": "interval"}, "scores"),
        ({"time_embeddings": "absolute"}, "scores"),
        ({"time_embeddings": "day", "time_span": (1_500_000_000, 1_500_000_000 + 60 * 86400)}, "scores"),
        ({"time_embeddings": "day_of_year"}, "scores"),
        ({"time_embeddings": "cos"}, "scores"),
        ({"abs_time_unit": 86400.0}, "scores"),
        ({"position_index": "slot"}, "scores"),
        ({"use_cp": False}, "loss"),
        ({"use_idcl": False}, "loss"),
        ({"use_pcl": False}, "loss"),
        ({"cp_weight": 0.5}, "loss"),
        ({"cp_reduction": "sum"}, "loss"),
        ({"idcl_temperature": 0.5}, "loss"),
        ({"pcl_ratio": 0.0}, "loss"),  # no placeholders: the views differ by dropout only
        ({"mask_pad_logit": True}, "loss"),
    ],
)
def test_ablation_switch_changes_computation(switch, what, batch):
    assert_switch_changes(make_model, batch, switch, what)


@pytest.mark.parametrize("mode", ["exclude", "keep"])
def test_false_negative_modes_change_the_loss(mode):
    batch = make_batch(B=8, L=L, num_items=N)
    batch["target"] = torch.tensor([3, 3, 3, 7, 7, 9, 10, 11])  # same-target rows exist
    assert_switch_changes(make_model, batch, {"false_negatives": mode}, "loss")


@pytest.mark.parametrize("flag, key, modality", [("use_text", "text", "txt"), ("use_image", "image", "img")])
def test_modality_switch_removes_the_branch(flag, key, modality, batch):
    full, ablated = make_model(), make_model(**{flag: False})
    assert modality in full.modalities and modality not in ablated.modalities
    assert not any(f".{modality}" in n or n.endswith(f"{modality}") for n, _ in ablated.named_parameters())
    other = side_info()
    other[key] = torch.randn_like(other[key])  # new features of the removed modality
    for model, should_change in ((full, True), (ablated, False)):
        model.eval()
        with torch.no_grad():
            before = model.score_all(model.user_representation(batch))
            model.attach_side_info(other)
            after = model.score_all(model.user_representation(batch))
        assert (not torch.allclose(before, after)) == should_change
    assert total_loss(ablated.train(), batch).isfinite()


def test_temporal_experts_gradients(batch):
    model = make_model()
    total_loss(model, batch).backward()
    grad = model.temporal_moe.experts.grad
    assert grad is not None and grad.abs().sum() > 0
    # code-faithful: a fixed buffer, never seen by the optimiser, unchanged by a step, still saved
    frozen = make_model(temporal_experts_trainable=False)
    assert "temporal_moe.experts" not in dict(frozen.named_parameters())
    assert "temporal_moe.experts" in frozen.state_dict()
    before = frozen.temporal_moe.experts.clone()
    opt = torch.optim.Adam(frozen.parameters(), lr=0.1)
    total_loss(frozen, batch).backward()
    opt.step()
    torch.testing.assert_close(frozen.temporal_moe.experts, before)
    assert frozen.temporal_moe.gate.bias.grad is not None  # the gate is still trained


def test_interactive_moe_identity_when_alpha_zero(batch):
    model = make_model().eval()
    with torch.no_grad():
        out = model.encode(batch)
        torch.testing.assert_close(out["e_inter"]["id"], out["e"]["id"])  # α_id = 0 at init
        assert not torch.allclose(out["e_inter"]["txt"], out["e"]["txt"])
        model.interactive_moe.alpha.zero_()
        out = model.encode(batch)
    for m in model.modalities:
        torch.testing.assert_close(out["e_inter"][m], out["e"][m])


def test_interval_buckets_golden_values():
    """Spec §10.3 and the paper's Toys case study (gaps of 17, 32, 34 days)."""
    model = make_model()
    time_seq = torch.tensor([[0, 0, 0, 1043712000, 1045180800, 1047945600, 1050883200, 1050883200 + 86400, 1050883200 + 86400, 10]])
    item_seq = (time_seq > 0).long()
    pos = model.time_embeddings.interval_positions(time_seq, item_seq > 0)
    # pads 0, first real item 0 (Eq. 11), 17/32/34 days, 1 day, equal time 0, a negative gap clamped to 0
    assert pos.tolist() == [[0, 0, 0, 0, 2048, 2139, 2148, 1639, 0, 0]]
    assert interval_table_size(2**28.7, 100.0) == 2871  # Games: Embedding(2871, d)
    big = torch.tensor([[1, 2**40]])
    assert model.time_embeddings.interval_positions(big, big > 0).max() == model.num_interval_buckets - 1


def test_absolute_and_interval_embeddings_respond_to_the_right_signal(batch):
    """Interval Only ignores a constant shift of every timestamp; the full model does not."""
    shifted = dict(batch)
    shifted["time_seq"] = torch.where(batch["item_seq"] > 0, batch["time_seq"] + 40 * 86400, 0)
    for variant, should_change in (("interval", False), ("interval+absolute", True)):
        model = make_model(time_embeddings=variant).eval()
        with torch.no_grad():
            a = model.score_all(model.user_representation(batch))
            b = model.score_all(model.user_representation(shifted))
        assert (not torch.allclose(a, b)) == should_change, variant


def test_placeholder_positions_exact_count_and_real_only():
    torch.manual_seed(0)
    pad_mask = torch.arange(L)[None, :] >= L - torch.tensor([10, 7, 3, 1, 4])[:, None]  # [5, L]
    chosen = placeholder_positions(pad_mask, 0.3)
    assert chosen.sum(1).tolist() == [3, 2, 0, 0, 1]
    assert not (chosen & ~pad_mask).any()
    seen = torch.zeros(L)
    for _ in range(200):  # every real position (the last one included) can be chosen
        seen += placeholder_positions(pad_mask[:1], 0.3)[0].float()
    assert (seen > 0).all()


def test_pcl_uses_the_placeholder(batch):
    """With β = 0 the two views differ only by dropout: in eval mode PCL equals ln-softmax of
    identical pairs, and it changes once placeholders are inserted."""
    model = make_model(pcl_ratio=0.0).eval()
    out = model.encode(batch)
    zero = model.placeholder_contrastive_loss(out, batch["target"])
    model.hparams.pcl_ratio = 0.5
    half = model.placeholder_contrastive_loss(out, batch["target"])
    assert not torch.isclose(zero, half)


def test_parameter_count_matches_official_games_config():
    """Spec §6.6: 1,471,955 trainable parameters without the unused absolute_m, +768 if the
    temporal experts are trainable (Games: 10,672 items, 192 categories, 2,871 interval rows)."""
    args = dict(num_items=10672, text_dim=768, image_dim=768, num_categories=192, num_interval_buckets=2871)
    count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
    assert count(HM4SR(temporal_experts_trainable=False, **args)) == 1_471_955
    assert count(HM4SR(**args)) == 1_471_955 + 768


def test_missing_modalities_switch_off_and_log(batch, caplog, tmp_path):
    caplog.set_level(logging.INFO)
    # unknown image dim: the branch is off at construction
    model = make_model(side=side_info(keys=("text", "category_multi_hot")), image_dim=0)
    assert model.modalities == ("id", "txt")
    assert "image branch" in caplog.text
    caplog.clear()
    # image dim known but the data gives no image table: rebuilt without the branch, hparams updated
    model = make_model(side=side_info(keys=("text",)))
    assert model.modalities == ("id", "txt") and not model.cp_on
    assert model.hparams.use_image is False and model.hparams.use_cp is False
    assert "no 'image' features" in caplog.text and "CP off" in caplog.text
    assert set(model.training_loss(batch)) == {"rec", "idcl", "pcl"}
    assert_checkpoint_round_trip(model, batch, tmp_path)
    # no text and no image: ID only, PCL off
    model = make_model(side={}, text_dim=0, image_dim=0, num_categories=0)
    assert model.modalities == ("id",)
    assert set(model.training_loss(batch)) == {"rec", "idcl"}
    assert_one_step_lowers_loss(model, batch)


def test_bad_side_info_is_a_clear_error():
    bad = side_info()
    bad["text"] = bad["text"][:, :5]
    with pytest.raises(ValueError, match="'text' has shape"):
        make_model(side=bad)
    bad = side_info()
    bad["category_multi_hot"] = bad["category_multi_hot"][:10]
    with pytest.raises(ValueError, match="category_multi_hot"):
        make_model(side=bad)
    model = HM4SR(num_items=N, d=D, max_len=L, text_dim=TEXT_DIM, image_dim=0, num_categories=0)
    with pytest.raises(RuntimeError, match="no 'text' table"):
        model.user_representation(make_batch(num_items=N))
    with pytest.raises(ValueError, match="cp_reduction"):
        HM4SR(num_items=N, cp_reduction="max")
    with pytest.raises(ValueError, match="time_embeddings must be one of"):
        HM4SR(num_items=N, time_embeddings="week")
    with pytest.raises(ValueError, match="needs the data's time span"):
        HM4SR(num_items=N, time_embeddings="day")  # no time_span and no data_info


def test_absolute_time_encoding_formula_and_autocast():
    """r2_k = cos((l_k t + z_k) freq^(-k/d)) with t in days (``abs_time_unit=86400``; the default 1
    is the code's raw seconds); computed in float32 even under bf16 autocast (a bf16 t would move
    in 128-day steps)."""
    model = make_model(abs_time_unit=86400.0)
    enc = model.time_embeddings
    time_seq = torch.tensor([[0, 1_400_000_000, 1_400_086_400]])
    pad = time_seq > 0
    t = time_seq.double() / 86400
    l, z = enc.absolute.weight[:, 0].double(), enc.absolute.bias.double()
    k = torch.arange(D, dtype=torch.float64)
    expected = torch.cos((t[..., None] * l + z) * 10000.0 ** (-k / D))
    torch.testing.assert_close(enc(time_seq, pad)["absolute"].double(), expected, atol=1e-4, rtol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        r2 = enc(time_seq, pad)["absolute"]
    assert r2.dtype == torch.float32
    torch.testing.assert_close(r2.double(), expected, atol=1e-4, rtol=0)


def test_fig5_time_embeddings_read_the_signal_they_name():
    """Day: the UTC day since the data's first interaction (clamped to its span); Day of Year: the
    UTC day of the year (leap years); Cos: cos(w a + b) of the gap since the previous item."""
    span = (1_500_000_000, 1_500_000_000 + 30 * 86400)
    enc = make_model(time_embeddings="day", time_span=span).time_embeddings
    ts = torch.tensor([[0, span[0], span[0] + 86399, span[0] + 86400, span[1] + 10 * 86400]])
    assert enc.day.num_embeddings == 31
    torch.testing.assert_close(enc(ts, ts > 0)["day"][0], enc.day.weight[[0, 0, 0, 1, 30]])
    enc = make_model(time_embeddings="day_of_year").time_embeddings
    ts = torch.tensor([[951782400, 951868800, 978220800, 1_709_164_800 + 3600]])  # 2000-02-29, 03-01, 12-31, 2024-02-29
    torch.testing.assert_close(enc(ts, ts > 0)["day_of_year"][0], enc.day_of_year.weight[[59, 60, 365, 59]])
    enc = make_model(time_embeddings="cos").time_embeddings
    ts = torch.tensor([[0, 1_500_000_000, 1_500_003_600, 1_500_003_600 + 86400]])
    gaps = torch.tensor([0.0, 0.0, 3600.0, 86400.0])
    expected = torch.cos(gaps[:, None] * enc.cos_w + enc.cos_b)
    torch.testing.assert_close(enc(ts, ts > 0)["cos"][0], expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert enc(ts, ts > 0)["cos"].dtype == torch.float32  # a bf16 gap would round 86400 s to 256 s steps


def test_cp_sum_reduction_is_eq22(batch):
    """Eq. 22 sums the BCE over a sequence's real items and its C categories (then the batch mean);
    the code's mean divides by real positions x C instead."""
    model = make_model(cp_reduction="sum").eval()
    with torch.no_grad():
        x = model.encode(batch)["x"]
        summed = model.category_prediction_loss(x, batch["item_seq"])
        model.hparams.cp_reduction = "mean"
        mean = model.category_prediction_loss(x, batch["item_seq"])
    n_real = (batch["item_seq"] > 0).sum()
    torch.testing.assert_close(summed, mean * n_real * C / len(batch["item_seq"]))
