"""The sparse interest capsule network and its losses (zoo/modules/sparse_capsules.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from zoo.modules.scoring import max_interest_scores
from zoo.modules.sparse_capsules import (
    SparseInterestCapsules,
    capsule_balance_loss,
    capsule_orthogonality_loss,
    gather_activated,
    interest_contrastive_loss,
    last_position_per_capsule,
    random_item_mask,
    read_out_interests,
)

B, L, D, C = 4, 6, 16, 5


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(B, L, D, generator=g)
    pad_mask = torch.ones(B, L, dtype=torch.bool)
    pad_mask[0, :5] = False  # one real item
    pad_mask[1, :2] = False
    return h, pad_mask


def make(**kw) -> SparseInterestCapsules:
    torch.manual_seed(0)
    caps = SparseInterestCapsules(D, num_capsules=C, max_len=L, dropout=0.0, **kw)
    with torch.no_grad():
        caps.base_vectors.normal_(0, 1.0)  # spread the items over capsules
    return caps.eval()


def test_shapes_and_active_set_is_the_argmax_of_real_items(inputs):
    h, pad_mask = inputs
    out = make()(h, pad_mask)
    assert out.s.shape == (B, L, C) and out.assign.shape == (B, L) and out.active.shape == (B, C)
    assert out.o.shape == (B, L) and out.q.shape == (B, L, D) and out.interests.shape == (B, C, D)
    expected = torch.zeros(B, C, dtype=torch.bool)
    for b in range(B):
        for i in range(L):
            if pad_mask[b, i]:
                expected[b, out.s[b, i].argmax()] = True
    assert torch.equal(out.active, expected)
    assert out.active[0].sum() == 1  # the one-item user has exactly one interest
    # o: a distribution over the real items only
    torch.testing.assert_close(out.o.sum(1), torch.ones(B))
    assert (out.o[~pad_mask] < 1e-6).all()


def test_pads_contribute_nothing(inputs):
    h, pad_mask = inputs
    caps = make()
    h2 = h.clone()
    h2[~pad_mask] = 100.0 * torch.randn_like(h2[~pad_mask])
    a, b = caps(h, pad_mask), caps(h2, pad_mask)
    torch.testing.assert_close(a.interests, b.interests)
    assert torch.equal(a.active, b.active)


def test_inactive_capsules_receive_no_mass(inputs):
    h, pad_mask = inputs
    out = make()(h, pad_mask)
    norms = out.interests.norm(dim=-1)  # [B, C]
    assert (norms[~out.active] < 1e-6).all()
    assert (norms[out.active] > 1e-6).all()


def test_only_activated_capsules_can_win_the_max(inputs):
    h, pad_mask = inputs
    out = make()(h, pad_mask)
    interests = out.interests.clone()
    items = torch.randn(30, D)
    # give every INACTIVE capsule a huge vector aligned with every item: it must still never win
    interests[~out.active] = 1e3 * items.sum(0)
    scores = max_interest_scores(interests, items, out.active, chunk_size=7)  # [B, 30]
    manual = torch.stack(
        [(interests[b, out.active[b]] @ items.T).amax(0) for b in range(B)]
    )  # max over the active set only
    torch.testing.assert_close(scores, manual)
    unmasked = max_interest_scores(interests, items, None, chunk_size=7)
    assert not torch.allclose(scores, unmasked)  # without the mask an inactive capsule would win


def test_noise_only_in_training(inputs):
    h, pad_mask = inputs
    caps = make()
    torch.testing.assert_close(caps.similarity(h), h @ caps.base_vectors.T)
    caps.train()
    torch.manual_seed(1)
    noisy = caps.similarity(h)
    assert not torch.allclose(noisy, h @ caps.base_vectors.T)


def test_forced_activation_is_used(inputs):
    h, pad_mask = inputs
    caps = make()
    forced_active = torch.ones(B, C, dtype=torch.bool)
    forced_assign = torch.zeros(B, L, dtype=torch.long)
    out = caps(h, pad_mask, forced_active=forced_active, forced_assign=forced_assign)
    assert torch.equal(out.active, forced_active) and torch.equal(out.assign, forced_assign)
    own = caps(h, pad_mask)
    assert not torch.allclose(out.interests, own.interests)


def test_ablation_switches_change_the_capsules(inputs):
    h, pad_mask = inputs
    full = make()(h, pad_mask)
    dense = make(sparse_activation=False)(h, pad_mask)
    assert dense.active.all() and not full.active.all()
    assert not torch.allclose(full.interests, dense.interests)
    no_pw = make(position_attention=False)(h, pad_mask)
    assert no_pw.o is None and not torch.allclose(full.interests, no_pw.interests)
    tanh = make(attention_activation="tanh")(h, pad_mask)  # paper Eq. 9; the default is the code's leaky_relu
    assert not torch.allclose(full.o, tanh.o)
    time_hook = make()(h, pad_mask, extra_attn=torch.randn(B, L, D))
    assert not torch.allclose(full.o, time_hook.o)


def test_read_out_golden():
    # spec: a = [p, 3, 5, 3, 7] -> capsule 3 reads position 3, 5 -> 2, 7 -> 4, the rest inactive
    assign = torch.tensor([[0, 3, 5, 3, 7]])
    pad_mask = torch.tensor([[False, True, True, True, True]])
    last = last_position_per_capsule(assign, pad_mask, 8)
    assert last.tolist() == [[-1, -1, -1, 3, -1, 2, -1, 4]]
    h_hat = torch.arange(5, dtype=torch.float32)[None, :, None].expand(1, 5, 2) + 1  # value = position + 1
    u = read_out_interests(h_hat, last)
    assert u[0, :, 0].tolist() == [0, 0, 0, 4, 0, 3, 0, 5]
    interests = torch.arange(8, dtype=torch.float32)[None, :, None].expand(1, 8, 2)
    assert gather_activated(interests, assign)[0, :, 0].tolist() == [0, 3, 5, 3, 7]


def test_balance_loss_golden():
    s = torch.tensor([[2.0, 0.0], [0.0, 2.0], [3.0, 0.0], [9.0, 9.0]])
    valid = torch.tensor([True, True, True, False])
    p = torch.softmax(s[:3], -1)
    f = torch.tensor([2 / 3, 1 / 3])
    expected = (f * p.mean(0)).sum()
    torch.testing.assert_close(capsule_balance_loss(s, valid), expected)
    # balanced assignment scores lower than everything on one capsule
    lopsided = torch.tensor([[5.0, 0.0], [5.0, 0.0]])
    balanced = torch.tensor([[5.0, 0.0], [0.0, 5.0]])
    assert capsule_balance_loss(balanced) < capsule_balance_loss(lopsided)
    assert capsule_balance_loss(s, torch.zeros(4, dtype=torch.bool)) == 0


def test_orthogonality_loss_golden():
    eye = torch.eye(C, D)
    expected = math.log(1 + (C - 1) * math.exp(-10.0))  # tau = 0.1, cos = 0 off the diagonal
    assert capsule_orthogonality_loss(eye, 0.1).item() == pytest.approx(expected, rel=1e-3)
    same = torch.ones(C, D)
    assert capsule_orthogonality_loss(same, 0.1).item() == pytest.approx(math.log(C), rel=1e-5)


def test_random_item_mask_rules():
    torch.manual_seed(0)
    item_seq = torch.randint(1, 50, (200, 10))
    item_seq[:100, :7] = 0  # 3 real items: never masked (shorter than 5)
    mask = random_item_mask(item_seq, 0.5, min_len=5)
    assert not mask[:, -1].any()  # never the most recent item
    assert not mask[item_seq == 0].any()  # never a pad
    assert not mask[:100].any()
    assert 0.4 < mask[100:, :-1].float().mean().item() < 0.6


def test_interest_contrastive_loss_matches_eq15_and_handles_no_mask():
    torch.manual_seed(0)
    u, u_aug = torch.randn(2, 3, 4, requires_grad=True), torch.randn(2, 3, 4)
    assign = torch.tensor([[0, 1, 2], [2, 2, 1]])
    mask = torch.tensor([[True, False, True], [False, True, False]])
    anchors = torch.stack([u[0, 0], u[0, 2], u[1, 2]])
    positives = torch.stack([u_aug[0, 0], u_aug[0, 2], u_aug[1, 2]])
    expected = F.cross_entropy(anchors @ positives.T, torch.arange(3))
    torch.testing.assert_close(interest_contrastive_loss(u, u_aug, assign, mask), expected)
    zero = interest_contrastive_loss(u, u_aug, assign, torch.zeros_like(mask))
    assert zero.item() == 0 and zero.requires_grad  # not NaN, and keeps a graph
