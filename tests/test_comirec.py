"""ComiRec-SA / ComiRec-DR / ComiRec+ / MIND and the shared multi-interest blocks (tiny configs)."""

from __future__ import annotations

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

from zoo.models.comirec import ComiRec
from zoo.models.mind import MIND
from zoo.modules.capsules import squash
from zoo.modules.multi_interest import (
    CapsuleInterestExtractor,
    SelfAttentivePooling,
    dynamic_interest_number,
)
from zoo.modules.padding import newest_last, oldest_first
from zoo.modules.sampled_softmax import NextItemLoss

N, D, K, L = 50, 16, 2, 10
VARIANTS = {
    "comirec_sa": (ComiRec, dict(extractor="sa")),
    "comirec_dr": (ComiRec, dict(extractor="dr")),
    "comirec_sa_plus": (ComiRec, dict(extractor="sa", transformer=True, pool="input")),
    "mind": (MIND, dict()),
}


def build(name: str, **over):
    cls, kw = VARIANTS[name]
    return cls(**{"num_items": N, "d": D, "K": K, "max_len": L, "n_neg": 20, **kw, **over})


@pytest.mark.parametrize("name", list(VARIANTS))
def test_shapes_loss_step_roundtrip(name: str, tmp_path) -> None:
    torch.manual_seed(0)
    model = build(name)
    batch = make_batch(B=6, L=L, num_items=N)
    V, _ = model.interests(batch)
    assert V.shape == (6, K, D)
    scores = assert_scores_shape(model, batch, N)
    cands = torch.cat([batch["target"][:, None], torch.randint(1, N + 1, (6, 7))], 1)
    torch.testing.assert_close(model.score_candidates(model.user_representation(batch), cands), scores.gather(1, cands))
    assert model.interests_for_predict(model.user_representation(batch)).shape == (6, K, D)
    # heavy left padding (one-item histories) stays finite
    total_loss(model, make_batch(B=6, L=L, num_items=N, min_len=1, seed=3))
    assert_one_step_lowers_loss(model, batch)
    assert_checkpoint_round_trip(model, batch, tmp_path)


@pytest.mark.parametrize(
    "name,switch,what",
    [
        ("comirec_sa", dict(pool="input"), "scores"),
        ("comirec_sa", dict(loss="full_softmax"), "loss"),
        ("comirec_sa", dict(loss="bpr"), "loss"),
        ("comirec_sa", dict(transformer=True), "scores"),
        ("comirec_dr", dict(routing_softmax="position"), "scores"),
        ("comirec_dr", dict(routing_iters=1), "scores"),
        ("mind", dict(dynamic_interests=False), "scores"),
        ("mind", dict(relu_layer=False), "scores"),
    ],
)
def test_switches_change_computation(name: str, switch: dict, what: str) -> None:
    batch = make_batch(B=6, L=L, num_items=N, min_len=3)
    assert_switch_changes(lambda **kw: build(name, **kw), batch, switch, what)


def test_padding_invariance() -> None:
    """Extra left pads change nothing (positions count from the oldest item, pads are masked)."""
    torch.manual_seed(0)
    for name in ("comirec_sa", "comirec_dr", "mind"):
        model = build(name, max_len=L + 4).eval()
        batch = make_batch(B=5, L=L, num_items=N)
        padded = dict(batch, item_seq=F.pad(batch["item_seq"], (4, 0)))
        with torch.no_grad():
            torch.testing.assert_close(model.score_all(model.user_representation(batch)),
                                       model.score_all(model.user_representation(padded)))


def test_oldest_first_rotation() -> None:
    seq = torch.tensor([[0, 0, 7, 8, 9], [1, 2, 3, 4, 5], [0, 0, 0, 0, 6]])
    want = torch.tensor([[7, 8, 9, 0, 0], [1, 2, 3, 4, 5], [6, 0, 0, 0, 0]])
    assert torch.equal(oldest_first(seq, seq > 0), want)
    assert torch.equal(newest_last(want, seq > 0), seq)  # the inverse, the row of pads only included
    x = torch.randn(3, 5, 2)
    assert torch.equal(newest_last(oldest_first(x, seq > 0), seq > 0), x)


def test_self_attentive_pooling_masks_pads() -> None:
    torch.manual_seed(0)
    pool = SelfAttentivePooling(D, 8, 3)
    h = torch.randn(2, 5, D)
    mask = torch.tensor([[False, False, True, True, True], [True] * 5])
    A = pool.attention(h, mask)  # [B, K, L]
    assert A.shape == (2, 3, 5)
    torch.testing.assert_close(A.sum(-1), torch.ones(2, 3))
    assert (A[0, :, :2] == 0).all()
    torch.testing.assert_close(pool(h, mask), A @ h)


def test_capsule_single_interest_is_squashed_sum() -> None:
    """K = 1 with softmax over interests: every coupling is 1, so v = squash(sum_i W_i x_i)."""
    torch.manual_seed(0)
    caps = CapsuleInterestExtractor(D, 1, L, bilinear="per_position")
    x = torch.randn(2, 4, D)
    mask = torch.tensor([[False, True, True, True], [True] * 4])
    x = x * mask[..., None]
    v = caps(x, mask)  # [2, 1, D]
    # row 0: the oldest real item (slot 1) uses W_0
    u0 = sum(caps.W[i, 0] @ x[0, i + 1] for i in range(3))
    u1 = sum(caps.W[i, 0] @ x[1, i] for i in range(4))
    torch.testing.assert_close(v[:, 0], squash(torch.stack([u0, u1])), rtol=1e-5, atol=1e-5)


def test_mind_dynamic_interest_number() -> None:
    mask = dynamic_interest_number(torch.tensor([1, 2, 3, 4, 9, 100]), K=4)
    assert mask.sum(1).tolist() == [1, 1, 1, 2, 3, 4]
    torch.manual_seed(0)
    model = build("mind", K=4).eval()
    batch = make_batch(B=4, L=L, num_items=N, min_len=2)
    batch["item_seq"][0, :-2] = 0  # a user with two items has K'_u = 1 interest
    with torch.no_grad():
        V, m = model.user_representation(batch)
        scores = model.score_all((V, m))
    assert m[0].tolist() == [True, False, False, False]
    torch.testing.assert_close(scores[0], V[0, 0] @ model.item_emb.weight.T)


def test_sampled_softmax_equals_full_softmax_without_replacement() -> None:
    """n_neg >= N, uniform, no replacement: the logQ shift is constant and the target's duplicate
    among the negatives is an accidental hit, so the loss IS the full softmax."""
    torch.manual_seed(0)
    user, items, target = torch.randn(5, D), torch.randn(N + 1, D), torch.randint(1, N + 1, (5,))
    full = NextItemLoss(N, "full_softmax")(user, target, items)
    sampled = NextItemLoss(N, "sampled_softmax", n_neg=N + 10, replacement=False)(user, target, items)
    torch.testing.assert_close(sampled, full)
    unmasked = NextItemLoss(N, "sampled_softmax", n_neg=N, replacement=False, mask_accidental_hits=False)
    assert unmasked(user, target, items) > full + 1e-4  # the target counted twice
    logits = user @ items.T
    logits[:, 0] = float("-inf")
    torch.testing.assert_close(full, F.cross_entropy(logits, target))


def test_sampled_softmax_popularity_and_bpr() -> None:
    torch.manual_seed(0)
    user, items, target = torch.randn(5, D), torch.randn(N + 1, D), torch.randint(1, N + 1, (5,))
    pop = NextItemLoss(N, "sampled_softmax", n_neg=30, sampler="popularity")
    with pytest.raises(RuntimeError, match="popularity"):
        pop(user, target, items)
    pop.set_popularity(torch.arange(N + 1).float())
    assert torch.isfinite(pop(user, target, items))
    bpr = NextItemLoss(N, "bpr")
    hist = torch.randint(1, N + 1, (5, L))
    neg = bpr.train_negatives(target, hist)
    assert (neg != target).all() and not (hist == neg[:, None]).any()
    torch.manual_seed(1)
    value = bpr(user, target, items, hist)
    torch.manual_seed(1)
    neg = bpr.train_negatives(target, hist)
    want = F.softplus(-((user * items[target]).sum(-1) - (user * items[neg]).sum(-1))).mean()
    torch.testing.assert_close(value, want)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="extractor"):
        ComiRec(num_items=N, extractor="xx")
    with pytest.raises(ValueError, match="self-attentive"):
        ComiRec(num_items=N, extractor="dr", transformer=True)
    with pytest.raises(ValueError, match="loss"):
        NextItemLoss(N, "hinge")
