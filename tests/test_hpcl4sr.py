"""HPCL4SR: shapes, losses, padding invariance, the angular margin, every ablation switch."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import make_batch
from model_checks import (
    assert_checkpoint_round_trip,
    assert_one_step_lowers_loss,
    assert_scores_shape,
    assert_switch_changes,
    total_loss,
)

from zoo.models.hpcl4sr import HPCL4SR

N, D, K, L, C = 50, 16, 2, 10, 5


def side_info(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cat = torch.randint(1, C + 1, (N + 1,), generator=g)
    cat[0] = 0
    cat[7] = 0  # an uncategorised item
    return {
        "category": cat,
        "category_transitions": torch.randint(0, 5, (C + 1, C + 1), generator=g).float(),
        "popularity": torch.randint(0, 9, (N + 1,), generator=g).float(),
    }


def build(attach: bool = True, **over) -> HPCL4SR:
    model = HPCL4SR(**{"num_items": N, "d": D, "K": K, "max_len": L + 4, "num_categories": C, "n_neg": 20, **over})
    if attach:
        model.attach_side_info(side_info())
    return model


def test_shapes_losses_step_roundtrip(tmp_path) -> None:
    torch.manual_seed(0)
    model = build()
    batch = make_batch(B=3, L=L, num_items=N)
    out = model.forward_interests(batch["item_seq"])
    for key in ("Q", "P", "M"):
        assert out[key].shape == (3, K, D), key
    assert out["X_ctx"].shape == (3, L, D)
    assert model.class_logits(out["X_ctx"]).shape == (3, L, C + 1)
    assert model.graph().shape == (C + 1, D)
    terms = model.training_loss(batch)
    assert set(terms) == {"rec", "class", "cl"}
    total_loss(model, make_batch(B=3, L=L, num_items=N, min_len=1, seed=4))  # heavy left padding
    assert_scores_shape(model, batch, N)
    assert_one_step_lowers_loss(model, make_batch(B=8, L=L, num_items=N))
    assert_checkpoint_round_trip(model, batch, tmp_path)


def test_padding_invariance() -> None:
    """Extra left pads or other ids at pad slots leave Q, P and M unchanged (pads are masked)."""
    torch.manual_seed(0)
    model = build().eval()
    batch = make_batch(B=4, L=L, num_items=N)
    seq = batch["item_seq"]
    ref = model.forward_interests(seq)
    padded = model.forward_interests(F.pad(seq, (4, 0)))
    for key in ("Q", "P", "M"):
        torch.testing.assert_close(ref[key], padded[key])


def test_class_loss_ignores_pads_and_uncategorised() -> None:
    model = build()
    seq = torch.tensor([[0, 0, 3, 7, 9]])  # item 7 has category 0
    x = model.forward_interests(seq)["X_ctx"]
    logits = model.class_logits(x)[0]
    cats = model.item_category[seq[0]]
    want = F.cross_entropy(logits[[2, 4]], cats[[2, 4]])
    torch.testing.assert_close(model.class_loss(x, seq), want)


def _positive_logit(loss: torch.Tensor, n_neg: int) -> float:
    # per anchor loss = log(1 + n_neg * exp(-l_pos)) when every negative has cos = 0
    return -math.log(torch.expm1(loss).item() / n_neg)


@pytest.mark.parametrize("theta_deg", [0.0, 40.0, 100.0])
def test_angular_margin_lowers_positive_logit_exactly(theta_deg: float) -> None:
    """M_1 = e1, M_2 = e2, P_k = cos(theta) M_k + sin(theta) e_{k+2}: each anchor's positive is at
    angle theta and its 2K-2 = 2 negatives are orthogonal (the anchor itself is NOT a negative),
    so the loss is log(1 + 2 exp(-cos(theta + m)/tau)) and the positive logit can be read back."""
    tau, m = 0.5, 10.0
    th = math.radians(theta_deg)
    e = torch.eye(4, dtype=torch.float64)
    M = torch.stack([e[0], e[1]])[None]  # [1, 2, 4]
    P = torch.stack([math.cos(th) * e[0] + math.sin(th) * e[2], math.cos(th) * e[1] + math.sin(th) * e[3]])[None]
    with_m = build(attach=False, tau=tau, margin_deg=m).double()
    without = build(attach=False, tau=tau, margin_deg=0.0).double()
    l_m = _positive_logit(with_m.contrastive_loss(M, P), 2)
    l_0 = _positive_logit(without.contrastive_loss(M, P), 2)
    # at theta = 0 info_nce clamps cos to 1 - 1e-7 before arccos (finite gradients): theta ~ 4.5e-4 rad
    tol = 5e-4 if theta_deg == 0 else 1e-6
    assert l_m == pytest.approx(math.cos(th + math.radians(m)) / tau, abs=tol)
    assert l_0 == pytest.approx(math.cos(th) / tau, abs=1e-6)
    assert l_0 - l_m == pytest.approx((math.cos(th) - math.cos(th + math.radians(m))) / tau, abs=tol)


def test_eq17_denominator_and_sum_reduction_golden() -> None:
    """The orthogonal set-up above: Eq. 17 keeps the UN-margined positive in the denominator,
    so each anchor's loss is -cos(theta + m)/tau + log(e^{cos(theta)/tau} + 2); "sum" adds the
    2K anchors' losses instead of averaging them."""
    tau, m, th = 0.5, 10.0, math.radians(40.0)
    e = torch.eye(4, dtype=torch.float64)
    M = torch.stack([e[0], e[1]])[None]  # [1, 2, 4]
    P = torch.stack([math.cos(th) * e[0] + math.sin(th) * e[2], math.cos(th) * e[1] + math.sin(th) * e[3]])[None]
    want = -math.cos(th + math.radians(m)) / tau + math.log(math.exp(math.cos(th) / tau) + 2)
    eq17 = build(attach=False, tau=tau, margin_deg=m, cl_denominator="eq17").double()
    assert eq17.contrastive_loss(M, P).item() == pytest.approx(want, abs=1e-9)
    eq15 = build(attach=False, tau=tau, margin_deg=m).double()
    summed = build(attach=False, tau=tau, margin_deg=m, cl_reduction="sum").double()
    assert summed.contrastive_loss(M, P).item() == pytest.approx(2 * K * eq15.contrastive_loss(M, P).item())


def test_class_loss_forms() -> None:
    """bce = Eqs. 11-12 as printed (softmax over C, binary CE vs the one-hot, summed over C);
    ce_pads = MDMI's CE where pads are class 0; class_grad_reverse flips only the gradient."""
    torch.manual_seed(0)
    seq = torch.tensor([[0, 0, 3, 7, 9]])  # item 7 uncategorised
    base = build()
    x = base.forward_interests(seq)["X_ctx"]
    logits, cats = base.class_logits(x)[0], base.item_category[seq[0]]
    z = torch.softmax(logits[[2, 4], 1:], -1)
    y = F.one_hot(cats[[2, 4]] - 1, C).float()
    want_bce = -(y * z.log() + (1 - y) * (1 - z).log()).sum(-1).mean()
    for form, want in (("bce", want_bce), ("ce_pads", F.cross_entropy(logits, cats))):
        model = build(class_loss=form)
        model.load_state_dict(base.state_dict())
        torch.testing.assert_close(model.class_loss(x, seq), want, rtol=1e-5, atol=1e-6)
    rev = build(class_grad_reverse=True)
    rev.load_state_dict(base.state_dict())
    grads = []
    for model in (base, rev):
        xx = x.detach().clone().requires_grad_(True)
        loss = model.class_loss(xx, seq)
        loss.backward()
        grads.append((loss.detach(), xx.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    assert grads[0][1].abs().sum() > 0
    torch.testing.assert_close(grads[1][1], -grads[0][1])


def test_contrastive_gradients_finite_for_identical_views() -> None:
    model = build(attach=False)
    M = torch.randn(3, K, D, requires_grad=True)
    model.contrastive_loss(M, M.detach().clone()).backward()
    assert torch.isfinite(M.grad).all()


def test_capsule_regularisation_is_orthogonality_infonce() -> None:
    model = build(attach=False, contrastive="capsule_reg", cr_tau=0.1)
    M = torch.randn(3, K, D)
    Mn = F.normalize(M, dim=-1)
    logits = Mn @ Mn.transpose(1, 2) / 0.1  # [B, K, K], positive = itself
    want = F.cross_entropy(logits.reshape(-1, K), torch.arange(K).repeat(3))
    torch.testing.assert_close(model.contrastive_loss(M, torch.randn(3, K, D)), want)


@pytest.mark.parametrize(
    "switch,what",
    [
        (dict(fusion="add"), "scores"),
        (dict(fusion="mul"), "scores"),
        (dict(fusion="none"), "scores"),
        (dict(contrastive="capsule_reg"), "loss"),
        (dict(contrastive="none"), "loss"),
        (dict(margin_deg=0.0), "loss"),
        (dict(tau=0.1), "loss"),
        (dict(lambda_class=0.0), "loss"),
        (dict(high_level_pool="self_attentive"), "scores"),
        (dict(routing_softmax="position"), "scores"),
        (dict(graph_readout="last"), "scores"),
        (dict(graph_hops=1), "scores"),
        (dict(loss="full_softmax"), "loss"),
        (dict(neg_sampler="popularity"), "loss"),
        (dict(cl_denominator="eq17"), "loss"),
        (dict(cl_reduction="sum"), "loss"),
        (dict(class_loss="bce"), "loss"),
        (dict(class_loss="ce_pads"), "loss"),
    ],
)
def test_switches_change_computation(switch: dict, what: str) -> None:
    batch = make_batch(B=6, L=L, num_items=N, min_len=3)
    assert_switch_changes(lambda **kw: build(**kw), batch, switch, what)


def test_base_variant_runs_without_categories() -> None:
    model = HPCL4SR(num_items=N, d=D, K=K, max_len=L, fusion="none", contrastive="none", lambda_class=0.0, n_neg=20)
    model.attach_side_info({})
    assert set(model.training_loss(make_batch(B=4, L=L, num_items=N))) == {"rec"}


def test_clear_errors() -> None:
    with pytest.raises(ValueError, match="num_categories"):
        HPCL4SR(num_items=N, d=D, K=K, max_len=L)
    with pytest.raises(ValueError, match="category_transitions"):
        build(attach=False).attach_side_info({"category": side_info()["category"]})
    with pytest.raises(ValueError, match="fusion"):
        build(attach=False, fusion="concat")
    with pytest.raises(RuntimeError, match="category"):
        build(attach=False).training_loss(make_batch(B=2, L=L, num_items=N))


def test_angular_margin_is_capped_at_pi() -> None:
    """cos(min(theta + m, pi)): a positive pair at 175 degrees with a 10-degree margin gets cos(pi) = -1,
    not cos(185 deg) > -1, which would reward pushing it further apart."""
    from zoo.modules.losses import info_nce

    theta, m, tau = math.radians(175.0), 10.0, 1.0
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    b = torch.tensor([[math.cos(theta), math.sin(theta)], [0.0, 1.0]], dtype=torch.float64)
    sim = a @ b.T  # row 0: positive at 175 degrees, negative b_1 at 90 degrees
    loss = info_nce(a, b, tau=tau, margin_deg=m)
    pos = torch.tensor([-1.0, 1.0], dtype=torch.float64)  # capped positive of row 0; row 1 at 0 degrees + m -> cos(10)
    pos[1] = math.cos(math.radians(10.0))
    logits = sim.clone()
    logits[0, 0], logits[1, 1] = pos[0], pos[1]
    expected = torch.nn.functional.cross_entropy(logits / tau, torch.arange(2))
    torch.testing.assert_close(loss, expected, atol=1e-4, rtol=0)  # 1e-4: the 1 - 1e-7 clamp before acos; uncapped is 2e-3 off
