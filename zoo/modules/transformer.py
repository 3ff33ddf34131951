"""Post-LN Transformer encoder shared by SASRec, MIRACLE/HORAE, TiMiRec+ and HM4SR.

RecBole-compatible block (the papers' official code builds on RecBole): multi-head
self-attention -> output projection -> dropout -> residual -> LayerNorm, then a position-wise
feed-forward (d -> d_ff -> d, GELU) -> dropout -> residual -> LayerNorm.  ReChorus's layer
(``src/utils/layers.py`` ``TransformerLayer``) is the same block with ``attn_projection=False``
(no output projection after the heads) and ``activation="relu"``.

Options every model needs from one place:
* ``causal``: SASRec-style left-to-right mask (True) or bidirectional (False, MIRACLE/HORAE).
* ``rope``: rotary position embedding applied to ``"qk"`` (RoFormer; HORAE paper Eq. 9) or
  ``"qv"`` (HORAE official code), or ``"none"``.
* ``attn_bias``: an extra additive attention bias ``[B, h|1, L, L]`` (e.g. time-interval bias).
* ``relation``: TiSASRec's per-pair key and value additions ``[B, L, L, d]`` (Li et al., WSDM
  2020, Eq. 7-8: ``e_ij = q_i (k_j + r^K_ij)^T / sqrt(d)``, ``z_i = sum_j a_ij (v_j + r^V_ij)``),
  the same pair in every layer, split into heads like q/k/v (HORAE's Fig. 7 relation matrix).

Sequences are LEFT-padded with item id 0 (the most recent item sits at position L-1); padded
keys are masked.  A padded query row that sees no valid key gets a finite large negative
mask, never ``-inf``, so no NaN ever appears at pad positions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.modules.dropout import Dropout

NEG_INF = -1e9  # finite "minus infinity" for additive masks (no NaN on fully masked rows)


def attention_mask(pad_mask: Tensor, causal: bool) -> Tensor:
    """Additive attention mask from a padding mask.

    Args:
        pad_mask: ``[B, L]`` bool, True where the position holds a real item.
        causal: if True, position i may only attend to positions <= i.

    Returns:
        ``[B, 1, L, L]`` float mask with 0 where attention is allowed and ``NEG_INF`` elsewhere.
    """
    B, L = pad_mask.shape
    allowed = pad_mask[:, None, None, :].expand(B, 1, L, L)  # keys must be real  # [B,1,L,L]
    if causal:
        tril = torch.ones(L, L, dtype=torch.bool, device=pad_mask.device).tril()
        allowed = allowed & tril
    mask = torch.zeros(B, 1, L, L, device=pad_mask.device)
    return mask.masked_fill(~allowed, NEG_INF)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoFormer, Su et al. 2021); HORAE Eq. 9.

    Rotates consecutive channel pairs of each head by angle ``pos * theta_j`` with
    ``theta_j = base^(-2j/d_head)``.
    """

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embedding needs an even head dimension, got {head_dim}")
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # [d_head/2]

    def forward(self, x: Tensor, positions: Tensor | None = None) -> Tensor:
        """x: ``[B, h, L, d_head]`` -> same shape, rotated by position."""
        L = x.shape[-2]
        pos = torch.arange(L, device=x.device, dtype=torch.float32) if positions is None else positions.float()
        angles = pos[..., None] * self.inv_freq  # [L, d_head/2] or [B, L, d_head/2]
        if angles.dim() == 3:
            angles = angles[:, None]  # [B, 1, L, d_head/2]
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        x1, x2 = x[..., 0::2], x[..., 1::2]  # [B, h, L, d_head/2] each
        rotated = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
        return rotated.flatten(-2)  # [B, h, L, d_head]


class MultiHeadSelfAttention(nn.Module):
    """Scaled dot-product self-attention with optional rotary embedding on q/k or q/v."""

    def __init__(
        self, d: int, n_heads: int, dropout: float, rope: str = "none", ln_eps: float = 1e-12, projection: bool = True
    ) -> None:
        super().__init__()
        if d % n_heads:
            raise ValueError(f"hidden size {d} is not divisible by n_heads={n_heads}")
        if rope not in ("none", "qk", "qv"):
            raise ValueError(f"rope must be 'none', 'qk' or 'qv', got {rope!r}")
        self.n_heads, self.head_dim, self.rope_mode = n_heads, d // n_heads, rope
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.dense = nn.Linear(d, d) if projection else nn.Identity()  # ReChorus: no output projection
        self.rope = RotaryEmbedding(self.head_dim) if rope != "none" else None
        self.attn_dropout = dropout
        self.prob_dropout = Dropout(dropout)  # on attention probabilities (CPU training path)
        self.out_dropout = Dropout(dropout)
        self.layer_norm = nn.LayerNorm(d, eps=ln_eps)

    def _heads(self, x: Tensor) -> Tensor:
        B, L, _ = x.shape
        return x.view(B, L, self.n_heads, self.head_dim).transpose(1, 2)  # [B, h, L, d_head]

    def _pair_heads(self, r: Tensor) -> Tensor:
        B, Lq, L, _ = r.shape
        return r.view(B, Lq, L, self.n_heads, self.head_dim).permute(0, 3, 1, 2, 4)  # [B, h, Lq, L, d_head]

    def forward(
        self, h: Tensor, mask: Tensor, last_query: bool = False, relation: tuple[Tensor, Tensor] | None = None
    ) -> Tensor:
        """h: ``[B, L, d]``; mask: additive ``[B, 1|h, L, L]`` -> ``[B, L, d]``.

        ``last_query``: only the most recent position queries (keys and values stay every
        position) -> ``[B, 1, d]``, exactly the last row of the full output at 1/L of the cost.
        ``relation``: ``(r^K, r^V)``, each ``[B, L, L, d]`` (query i, key j): added to key j and
        value j for query i (TiSASRec).  Relative already, they meet the UN-rotated query and are
        added after any rotary rotation of the values, so RoPE stays the position term.
        """
        hq = h[:, -1:] if last_query else h  # [B, Lq, d]
        q, k, v = self._heads(self.query(hq)), self._heads(self.key(h)), self._heads(self.value(h))
        q_plain = q  # [B, h, Lq, d_head] before rotation (the relation term's query)
        if last_query:
            mask = mask[:, :, -1:]  # [B, 1|h, 1, L]
        if self.rope is not None:
            L = h.shape[1]
            q_pos = torch.arange(L - q.shape[-2], L, device=h.device)  # the queries' own positions
            q = self.rope(q, q_pos)
            if self.rope_mode == "qk":
                k = self.rope(k)
            else:
                v = self.rope(v)
        if relation is not None:  # TiSASRec: explicit scores (the pair terms do not fit SDPA)
            Lq = q.shape[-2]
            rel_k, rel_v = (self._pair_heads(r[:, -Lq:]).to(q.dtype) for r in relation)  # [B, h, Lq, L, d_head]
            scores = q @ k.transpose(-1, -2) + torch.einsum("bhqd,bhqkd->bhqk", q_plain, rel_k)  # [B, h, Lq, L]
            probs = self.prob_dropout(torch.softmax(scores / math.sqrt(self.head_dim) + mask.to(q.dtype), -1))
            ctx = probs @ v + torch.einsum("bhqk,bhqkd->bhqd", probs, rel_v)  # [B, h, Lq, d_head]
        elif self.training and self.attn_dropout > 0 and q.device.type == "cpu":
            # SDPA's CPU dropout draws with bernoulli_ (slow there); the same math with our mask
            scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + mask.to(q.dtype)  # [B, h, L, L]
            ctx = self.prob_dropout(torch.softmax(scores, -1)) @ v  # [B, h, L, d_head]
        else:
            ctx = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask.to(q.dtype), dropout_p=self.attn_dropout if self.training else 0.0
            )  # [B, h, L, d_head]
        ctx = ctx.transpose(1, 2).reshape(hq.shape)  # [B, Lq, d]
        return self.layer_norm(self.out_dropout(self.dense(ctx)) + hq)


ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}  # FFN activation: RecBole GELU | ReChorus ReLU


class FeedForward(nn.Module):
    """Position-wise feed-forward: Linear(d, d_ff) -> GELU|ReLU -> Linear(d_ff, d), residual + LN."""

    def __init__(self, d: int, d_ff: int, dropout: float, ln_eps: float = 1e-12, activation: str = "gelu") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.act = ACTIVATIONS[activation]
        self.dense_1, self.dense_2 = nn.Linear(d, d_ff), nn.Linear(d_ff, d)
        self.dropout = Dropout(dropout)
        self.layer_norm = nn.LayerNorm(d, eps=ln_eps)

    def forward(self, h: Tensor) -> Tensor:
        return self.layer_norm(self.dropout(self.dense_2(self.act(self.dense_1(h)))) + h)  # [B, L, d]


class TransformerLayer(nn.Module):
    def __init__(
        self, d: int, n_heads: int, d_ff: int, dropout: float, rope: str = "none", ln_eps: float = 1e-12,
        activation: str = "gelu", attn_projection: bool = True,
    ) -> None:
        super().__init__()
        self.attention = MultiHeadSelfAttention(d, n_heads, dropout, rope, ln_eps, attn_projection)
        self.feed_forward = FeedForward(d, d_ff, dropout, ln_eps, activation)

    def forward(
        self, h: Tensor, mask: Tensor, last_query: bool = False, relation: tuple[Tensor, Tensor] | None = None
    ) -> Tensor:
        return self.feed_forward(self.attention(h, mask, last_query, relation))  # [B, L or 1, d]


class TransformerEncoder(nn.Module):
    """A stack of post-LN Transformer layers.

    Args:
        d: hidden size.  n_layers / n_heads / d_ff: depth, heads, feed-forward size.
        dropout: dropout on attention probabilities and sub-layer outputs.
        causal: left-to-right (SASRec) or bidirectional (MIRACLE/HORAE) attention.
        rope: ``"none"``, ``"qk"`` or ``"qv"`` rotary position embedding in every layer.
        ln_eps: LayerNorm epsilon (RecBole 1e-12; ReChorus / PyTorch default 1e-5).
        activation: feed-forward activation, ``"gelu"`` (RecBole) or ``"relu"`` (ReChorus).
        attn_projection: the output projection after the attention heads (RecBole); False =
            none (ReChorus ``layers.MultiHeadAttention``).
    """

    def __init__(
        self,
        d: int,
        n_layers: int = 2,
        n_heads: int = 2,
        d_ff: int | None = None,
        dropout: float = 0.2,
        causal: bool = True,
        rope: str = "none",
        ln_eps: float = 1e-12,
        activation: str = "gelu",
        attn_projection: bool = True,
    ) -> None:
        super().__init__()
        self.causal = causal
        self.layers = nn.ModuleList(
            TransformerLayer(d, n_heads, d_ff or 4 * d, dropout, rope, ln_eps, activation, attn_projection)
            for _ in range(n_layers)
        )

    def forward(
        self,
        h: Tensor,
        pad_mask: Tensor,
        attn_bias: Tensor | None = None,
        causal: bool | None = None,
        last_only: bool = False,
        relation: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """h: ``[B, L, d]`` input embeddings; pad_mask: ``[B, L]`` bool (True = real item).

        ``causal`` overrides the constructor's choice for one call (HORAE's refinement encoder).
        Returns ``[B, L, d]`` hidden states (pad positions hold finite, meaningless values), or
        with ``last_only`` the most recent position's ``[B, d]``: the last layer then computes
        only that position's query, attention row and feed-forward (models that read out
        position -1 only: SASRec, HM4SR), the same values as ``h[:, -1]`` of the full output.
        ``relation``: TiSASRec's ``(r^K, r^V)``, each ``[B, L, L, d]``, shared by every layer.
        """
        mask = attention_mask(pad_mask, self.causal if causal is None else causal)  # [B, 1, L, L]
        if attn_bias is not None:
            mask = mask + attn_bias
        for i, layer in enumerate(self.layers):
            h = layer(h, mask, last_query=last_only and i == len(self.layers) - 1, relation=relation)
        return h[:, -1] if last_only else h


def init_weights(module: nn.Module, std: float = 0.02, bias_std: float = 0.0) -> None:
    """RecBole initialisation: normal(0, std) for Linear/Embedding, Linear biases 0, LayerNorm to
    (1, 0).  ReChorus (``BaseModel.init_weights``): std 0.01 and Linear biases normal(0, 0.01)
    (``bias_std=0.01``); other modules (GRU) keep PyTorch's own initialisation in both."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        module.weight.data.normal_(0.0, std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            if bias_std > 0:
                module.bias.data.normal_(0.0, bias_std)
            else:
                module.bias.data.zero_()
    elif isinstance(module, nn.LayerNorm):
        module.weight.data.fill_(1.0)
        module.bias.data.zero_()
