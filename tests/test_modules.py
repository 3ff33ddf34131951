"""Shared blocks whose fast paths must equal their plain definitions."""

import torch

from zoo.modules.dropout import Dropout
from zoo.modules.scoring import interest_max, max_interest_scores


def test_dropout_keeps_nn_dropout_semantics() -> None:
    torch.manual_seed(0)
    x = torch.ones(200, 500)
    drop = Dropout(0.3)
    y = drop(x)
    zero_fraction = (y == 0).float().mean().item()
    assert abs(zero_fraction - 0.3) < 0.01  # P(drop) = p
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.7))  # inverted scaling
    assert abs(y.mean().item() - 1.0) < 0.02  # expectation preserved
    drop.eval()
    assert torch.equal(drop(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)


def test_interest_max_gradient_equals_masked_amax() -> None:
    torch.manual_seed(0)
    B, K, N, d = 5, 4, 30, 8
    V = torch.randn(B, K, d, requires_grad=True)
    E = torch.randn(N, d, requires_grad=True)
    mask = torch.rand(B, K) > 0.4
    mask[0] = False  # a user with no active interest scores -inf everywhere
    mask[1:, 0] = True
    weights = torch.randn(B, N)

    s_ref = torch.einsum("bkd,nd->bkn", V, E).masked_fill(~mask[:, :, None], float("-inf")).amax(1)
    g_ref = torch.autograd.grad((torch.where(torch.isfinite(s_ref), s_ref, 0) * weights).sum(), (V, E))

    s = max_interest_scores(V, E, mask, chunk_size=7)
    assert torch.equal(torch.isinf(s), torch.isinf(s_ref)) and torch.isinf(s[0]).all()
    assert torch.allclose(s[1:], s_ref[1:])
    g = torch.autograd.grad((torch.where(torch.isfinite(s), s, 0) * weights).sum(), (V, E))
    for a, b in zip(g, g_ref):
        assert torch.allclose(a, b, atol=1e-6)
    with torch.no_grad():  # the in-place evaluation path gives the same scores
        assert torch.allclose(interest_max(torch.einsum("bkd,nd->bkn", V, E), mask)[1:], s_ref[1:])


def test_last_only_encoder_equals_last_row_of_full_output() -> None:
    from zoo.modules.transformer import TransformerEncoder

    torch.manual_seed(0)
    B, L, d = 4, 9, 16
    h = torch.randn(B, L, d)
    pad = torch.ones(B, L, dtype=torch.bool)
    pad[0, :5] = False  # left padding
    pad[1, :8] = False  # a single real item
    for causal in (True, False):
        for rope in ("none", "qk", "qv"):
            enc = TransformerEncoder(d, n_layers=2, n_heads=2, dropout=0.1, causal=causal, rope=rope).eval()
            bias = torch.randn(B, 1, L, L)
            full = enc(h, pad, attn_bias=bias)[:, -1]  # [B, d]
            last = enc(h, pad, attn_bias=bias, last_only=True)  # [B, d]
            assert last.shape == (B, d)
            assert torch.allclose(full, last, atol=1e-5), (causal, rope)


def test_relation_attention_equals_tisasrec_formula() -> None:
    """TiSASRec's attention (Li et al. 2020, Eqs. 7-8), written out pair by pair:
    e_ij = q_i (k_j + r^K_ij)^T / sqrt(d_h), z_i = sum_j softmax_j(e_ij) (v_j + r^V_ij), per head;
    then the layer's projection, residual and LayerNorm.  Pad keys get no weight."""
    import math

    from zoo.modules.transformer import MultiHeadSelfAttention, attention_mask

    torch.manual_seed(0)
    B, L, d, H = 2, 4, 8, 2
    dh = d // H
    att = MultiHeadSelfAttention(d, H, dropout=0.0).eval()
    h = torch.randn(B, L, d)
    pad = torch.tensor([[False, True, True, True], [True] * 4])
    rk, rv = torch.randn(B, L, L, d), torch.randn(B, L, L, d)
    with torch.no_grad():
        got = att(h, attention_mask(pad, causal=False), relation=(rk, rv))
        q, k, v = att.query(h), att.key(h), att.value(h)
        ctx = torch.zeros(B, L, d)
        for b in range(B):
            for head in range(H):
                sl = slice(head * dh, (head + 1) * dh)
                for i in range(L):
                    e = torch.tensor([float(q[b, i, sl] @ (k[b, j, sl] + rk[b, i, j, sl])) / math.sqrt(dh)
                                      if pad[b, j] else -math.inf for j in range(L)])
                    a = torch.softmax(e, 0)
                    ctx[b, i, sl] = sum(a[j] * (v[b, j, sl] + rv[b, i, j, sl]) for j in range(L))
        want = att.layer_norm(att.dense(ctx) + h)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # the relation terms matter, and zero relations give the plain attention
    with torch.no_grad():
        plain = att(h, attention_mask(pad, causal=False))
        zeros = att(h, attention_mask(pad, causal=False), relation=(torch.zeros_like(rk), torch.zeros_like(rv)))
    torch.testing.assert_close(zeros, plain, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-3)


def test_relation_attention_last_query_equals_last_row() -> None:
    from zoo.modules.transformer import TransformerEncoder

    torch.manual_seed(0)
    B, L, d = 3, 5, 8
    enc = TransformerEncoder(d, n_layers=2, n_heads=2, dropout=0.1, causal=False, rope="qk").eval()
    h, pad = torch.randn(B, L, d), torch.ones(B, L, dtype=torch.bool)
    pad[0, :3] = False
    rel = (torch.randn(B, L, L, d), torch.randn(B, L, L, d))
    with torch.no_grad():
        torch.testing.assert_close(enc(h, pad, relation=rel, last_only=True), enc(h, pad, relation=rel)[:, -1],
                                   rtol=1e-5, atol=1e-5)
