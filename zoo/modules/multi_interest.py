"""Multi-interest extractors and the target-interest predictor shared by ComiRec, MIND, TiMiRec
and HPCL4SR.

* :class:`SelfAttentivePooling` — ComiRec-SA / Lin et al.'s structured self-attention
  (TiMiRec Eqs. 12-13): ``A = softmax_L(W2 tanh(W1 H))``, ``V = A H``; ``K`` attention heads.
* :class:`SelfAttentiveExtractor` — item embeddings + learned positions [+ one bidirectional
  Transformer layer, the "+" variants of ComiRec/TiMiRec] -> :class:`SelfAttentivePooling`.
* :class:`CapsuleInterestExtractor` — behaviour-to-interest dynamic routing on top of
  :func:`zoo.modules.capsules.dynamic_routing`: ComiRec-DR's per-position bilinear map
  (``bilinear="per_position"``, ``u_hat_{k,i} = W_{i,k} x_i``, zero initial logits) or MIND's
  shared one (``bilinear="shared"``, ``u_hat_i = S x_i``, random initial logits N(0, 1)).
* :class:`TargetInterestPredictor` — TiMiRec's G_P (Eqs. 14-15): its own item embedding, a GRU
  over the history (last valid hidden state), an MLP head to K logits ``z^q``.

Sequences arrive LEFT-padded (zoo batch contract); where a paper indexes positions from the
oldest item of a right-padded window (ComiRec-DR's per-position weights, HPCL4SR Eq. 6), use
:func:`zoo.modules.padding.oldest_first` to rotate each row so that slot 0 holds the oldest real item.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.modules.capsules import dynamic_routing
from zoo.modules.dropout import Dropout
from zoo.modules.embeddings import LearnedPositions
from zoo.modules.padding import oldest_first
from zoo.modules.rnn import gru_right_padded
from zoo.modules.transformer import NEG_INF, TransformerEncoder


class SelfAttentivePooling(nn.Module):
    """K-head self-attentive pooling (ComiRec-SA; TiMiRec Eqs. 12-13; HPCL4SR option for Eq. 6).

    Args:
        d: input size.  d_a: attention size D_a (ComiRec: 4d; TiMiRec code: 8).  K: interests.
        bias: biases in W1/W2 (both official codes use them; the papers write them bias-free).
    """

    def __init__(self, d: int, d_a: int, K: int, bias: bool = True) -> None:
        super().__init__()
        self.W1 = nn.Linear(d, d_a, bias=bias)
        self.W2 = nn.Linear(d_a, K, bias=bias)

    def attention(self, h: Tensor, pad_mask: Tensor) -> Tensor:
        """h ``[B, L, d]``, pad_mask ``[B, L]`` -> A ``[B, K, L]`` (softmax over real positions)."""
        s = self.W2(torch.tanh(self.W1(h)))  # [B, L, K]
        s = s.masked_fill(~pad_mask[..., None], NEG_INF)
        a = torch.softmax(s, dim=1).masked_fill(~pad_mask[..., None], 0.0)  # [B, L, K]
        return a.transpose(1, 2)  # [B, K, L]

    def forward(self, h: Tensor, pad_mask: Tensor, values: Tensor | None = None) -> Tensor:
        """V = A · values (``values`` defaults to ``h``): ``[B, K, d]`` (Eq. 13)."""
        return self.attention(h, pad_mask) @ (h if values is None else values)  # [B, K, d]


class SelfAttentiveExtractor(nn.Module):
    """Positions [+ Transformer layer] + self-attentive pooling over given item embeddings.

    Args:
        d, K, d_a: sizes (see :class:`SelfAttentivePooling`).
        max_len: longest history (size of the position table).
        position_index: ``"oldest"`` (THUDM ComiRec: slot 0 = oldest item), ``"slot"`` or
            ``"recent"`` (ReChorus/TiMiRec recency index: the most recent item always has the
            same position; see :class:`LearnedPositions`).
        transformer: one bidirectional post-LN Transformer layer before the pooling (ComiRec+ /
            TiMiRec+; ReChorus: 1 head, d_ff = d, no dropout).
        activation / attn_projection: that layer's FFN activation (``"gelu"``; ReChorus
            ``"relu"``) and attention output projection (True; ReChorus has none).
        pool: ``"input"`` pools the vectors the attention saw (pos-added / Transformer outputs;
            TiMiRec) or ``"raw"`` the raw item embeddings (THUDM and ReChorus ComiRec-SA).
    """

    def __init__(
        self,
        d: int,
        K: int,
        d_a: int,
        max_len: int,
        position_index: str = "oldest",
        transformer: bool = False,
        n_heads: int = 1,
        pool: str = "input",
        activation: str = "gelu",
        attn_projection: bool = True,
    ) -> None:
        super().__init__()
        if pool not in ("input", "raw"):
            raise ValueError(f"pool must be 'input' or 'raw', got {pool!r}")
        self.pool = pool
        self.pos_emb = LearnedPositions(max_len, d, index=position_index)
        self.transformer = (
            TransformerEncoder(d, n_layers=1, n_heads=n_heads, d_ff=d, dropout=0.0, causal=False, ln_eps=1e-5,
                               activation=activation, attn_projection=attn_projection)
            if transformer
            else None
        )
        self.pooling = SelfAttentivePooling(d, d_a, K)

    def forward(self, item_seq: Tensor, item_vecs: Tensor) -> Tensor:
        """item_seq ``[B, L]`` ids, item_vecs ``[B, L, d]`` their embeddings -> V ``[B, K, d]``."""
        pad_mask = item_seq > 0  # [B, L]
        h = item_vecs + self.pos_emb(item_seq)  # [B, L, d]
        if self.transformer is not None:
            h = self.transformer(h, pad_mask) * pad_mask[..., None]  # [B, L, d], pads zeroed
        return self.pooling(h, pad_mask, item_vecs if self.pool == "raw" else h)  # [B, K, d]


class CapsuleInterestExtractor(nn.Module):
    """Behaviour-to-interest dynamic routing (ComiRec-DR, MIND, HPCL4SR Eq. 10).

    Args:
        d: item vector size.  K: interest capsules.  max_len: longest history (per-position maps).
        bilinear: ``"per_position"`` (ComiRec-DR: ``W in R^{L x K x d x d}``, N(0, 1) init as the
            official code; positions counted from the oldest item) or ``"shared"`` (MIND:
            ``S in R^{d x d}`` shared by all capsules; also N(0, 1), so that prediction vectors
            have ComiRec-DR's scale: with a small init the squashed capsules vanish).
        iters: routing iterations r (3 in both codes).
        softmax_over: ``"interest"`` (Sabour / ComiRec-TF / MIND) or ``"position"`` (PyTorch ports).
        random_init: initial routing logits ~ N(0, 1) (MIND; needed with a shared map, otherwise
            all capsules coincide) instead of zeros (ComiRec-DR).  In eval mode the draw uses a
            fixed seed so that inference is deterministic (checkpoints score reproducibly).
    """

    def __init__(
        self,
        d: int,
        K: int,
        max_len: int,
        bilinear: str = "per_position",
        iters: int = 3,
        softmax_over: str = "interest",
        random_init: bool | None = None,
    ) -> None:
        super().__init__()
        if bilinear not in ("per_position", "shared"):
            raise ValueError(f"bilinear must be 'per_position' or 'shared', got {bilinear!r}")
        self.bilinear, self.K, self.max_len, self.iters, self.softmax_over = bilinear, K, max_len, iters, softmax_over
        self.random_init = (bilinear == "shared") if random_init is None else random_init
        if bilinear == "per_position":
            self.W = nn.Parameter(torch.randn(max_len, K, d, d))  # [L, K, d_out, d_in]
        else:
            self.S = nn.Parameter(torch.randn(d, d))  # [d_out, d_in], same N(0, 1) scale as W

    def prediction_vectors(self, x: Tensor, pad_mask: Tensor) -> tuple[Tensor, Tensor]:
        """x ``[B, L, d]`` -> (u_hat ``[B, K, L, d]`` or ``[B, L, d]``, its pad mask ``[B, L]``).

        Rows are rotated oldest-first, so slot i is the i-th oldest item (ComiRec's W_i)."""
        L = x.shape[1]
        if L > self.max_len:
            raise ValueError(f"sequence length {L} exceeds the capsule network's max_len={self.max_len}")
        x, pad_mask = oldest_first(x, pad_mask), oldest_first(pad_mask, pad_mask)
        if self.bilinear == "shared":
            return x @ self.S.T, pad_mask  # [B, L, d]
        return torch.einsum("lked,bld->bkle", self.W[:L], x), pad_mask  # [B, K, L, d]

    def initial_logits(self, B: int, L: int, ref: Tensor) -> Tensor | None:
        """b^(0): zeros (None) or N(0, 1) ``[B, K, L]``; in eval drawn from a fixed seed for the
        full ``max_len`` window, so extra padding does not change a user's logits."""
        if not self.random_init:
            return None
        if self.training:
            return torch.randn(B, self.K, L, device=ref.device, dtype=ref.dtype)
        g = torch.Generator().manual_seed(0)
        # drawn on CPU (the generator's device) so every device gets the same logits, then moved
        return torch.randn(B, self.K, self.max_len, generator=g, device="cpu")[:, :, :L].to(device=ref.device, dtype=ref.dtype)

    def forward(self, x: Tensor, pad_mask: Tensor, capsule_mask: Tensor | None = None) -> Tensor:
        """x ``[B, L, d]`` (pads zeroed), pad_mask ``[B, L]`` -> interest capsules ``[B, K, d]``."""
        u_hat, mask = self.prediction_vectors(x, pad_mask)
        B, L = mask.shape
        return dynamic_routing(
            u_hat,
            mask,
            iters=self.iters,
            init_logits=self.initial_logits(B, L, x),
            capsule_mask=capsule_mask,
            softmax_over=self.softmax_over,
            detach_intermediate=True,
            num_capsules=self.K,
        )


class TargetInterestPredictor(nn.Module):
    """TiMiRec's target-interest predictor G_P (Eqs. 14-15).

    s = last valid hidden state of a GRU over a separate item embedding (Eq. 14);
    z^q = W2 ReLU(W1 s + b1) + b2 (Eq. 15, ``head_layers=2``; ReChorus puts Dropout(0.5) before
    the ReLU) or a single ``Linear(d, K)`` (``head_layers=1``, ReChorus' Beauty run).

    Args:
        num_items: N.  d: embedding/hidden size.  K: interests.
        head_layers: 1 or 2.  head_dropout: dropout inside the 2-layer head.
    """

    def __init__(self, num_items: int, d: int, K: int, head_layers: int = 2, head_dropout: float = 0.5) -> None:
        super().__init__()
        if head_layers not in (1, 2):
            raise ValueError(f"head_layers must be 1 or 2, got {head_layers}")
        self.item_emb = nn.Embedding(num_items + 1, d)
        self.gru = nn.GRU(d, d, batch_first=True)
        if head_layers == 1:
            self.head = nn.Sequential(nn.Linear(d, K))
        else:
            self.head = nn.Sequential(nn.Linear(d, d), Dropout(head_dropout), nn.ReLU(), nn.Linear(d, K))

    def summary(self, item_seq: Tensor) -> Tensor:
        """s_{u,t}: item_seq ``[B, L]`` (left-padded) -> ``[B, d]`` GRU state after the last item."""
        pad_mask = item_seq > 0
        x = oldest_first(self.item_emb(item_seq), pad_mask)  # [B, L, d] right-padded
        lengths = pad_mask.sum(1).clamp(min=1)  # [B] (an empty row reads its first position, as packed)
        return gru_right_padded(self.gru, x, lengths)[1]  # [B, d]: the packed GRU's final state, one dense pass

    def forward(self, item_seq: Tensor) -> Tensor:
        """Predicted interest logits z^q ``[B, K]`` (Eq. 15)."""
        return self.head(self.summary(item_seq))


def interest_cosine(interests: Tensor, target_emb: Tensor) -> Tensor:
    """TiMiRec Eq. 5: z^p_k = cos(v^k, i) for interests ``[B, K, d]``, target ``[B, d]`` -> ``[B, K]``."""
    return F.cosine_similarity(interests, target_emb[:, None, :], dim=-1)


def dynamic_interest_number(seq_len: Tensor, K: int) -> Tensor:
    """MIND's adaptive interest count K'_u = max(1, min(K, floor(log2 |I_u|))) -> mask ``[B, K]``."""
    k_u = torch.log2(seq_len.clamp(min=1).float()).floor().clamp(1, K).long()  # [B]
    return torch.arange(K, device=seq_len.device)[None, :] < k_u[:, None]


__all__ = [
    "SelfAttentivePooling",
    "SelfAttentiveExtractor",
    "CapsuleInterestExtractor",
    "TargetInterestPredictor",
    "interest_cosine",
    "dynamic_interest_number",
]
