"""MIRACLE's sparse interest capsule network and its losses (shared with HORAE).

MIRACLE (Tang et al., SIGIR'23) Sec. 3.3 / HORAE (Hu et al., TOIS'25) Sec. 3.3:

    s_ij = <h_i, a_j> (1 + eps)                       base vectors A [C, d]       (M7 / H14)
    a_i  = argmax_j s_ij ;  I_u = {j : exists i, a_i = j}                         (M8 / H15)
    o    = softmax_i(MLP(h_i + P~_i [+ T~_i]))           position(-time) attention (M9 / H16)
    q_i  = LayerNorm(tanh(h_i W_5 + b_5) + h_i)                                   (M10 / H17)
    c_ij = softmax_j(b_ij + m_ij), z_j = sum_i c_ij o_i q_i, u_j = squash(z_j)    (M11-13 / H18-21)
    b_ij += <q_i, u_j>, b^(0) = s                                                 (M14 / H22)

Choices (spec ``miracle.md`` Sec. 8 items A1-A5, all documented):

* Noise (A2): ``s + z * (noise_scale * s.detach() + 0.01)`` with ``z ~ N(0, 1)`` in training only,
  i.e. ``eps ~ N(0, noise_scale^2)`` multiplicatively (the paper: "Gaussian noise"; code values).
* Activation mask scope (A1): PER SEQUENCE: an item may route to any capsule active for the
  user (the paper's I_u); a per-item mask would make routing one-hot.  Hard top-1, no
  straight-through (A3): A learns through ``b^(0) = s``, the balance and orthogonality losses.
* Attention form (A4): the official code's ``Linear -> Dropout -> LeakyReLU -> Linear`` is the
  default ``attention_activation="leaky_relu"`` (it produced both papers' tables); the paper's
  Eq. 9 ``tanh((H + P~) W_3 + b_3) W_4 + b_4`` with ``W_4 in R^{d x 1}`` (the printed
  ``R^{d x N}`` gives no scalar per position) is ``"tanh"``; it keeps the code's dropout (the
  paper prints none; the training-speed golden curves were recorded with it).  Pads get -1e9
  before the softmax over positions.
* Agreement vector (A5): ``q_i``, as HORAE Eq. 22 and both codes (default
  ``routing_agreement="q"``); MIRACLE Eq. 14 as printed, ``b_ij += <h_i, u_j>``, is ``"h"``.
* ``q`` has dropout before the LayerNorm (code), eps 1e-12.
* A user with no real item (never produced by the datamodule) activates every capsule so that
  scores stay finite.

Ablations: ``sparse_activation=False`` (MIRACLE "w/o SS": every capsule active, b^(0) = s still;
the paper pairs it with C = 4), ``position_attention=False`` (MIRACLE "w/o PW": o_i = 1).
HORAE's time hook: ``forward(..., extra_attn=T~)`` adds its capsule-side time embeddings
to the attention input (Eq. 16).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.modules.capsules import dynamic_routing
from zoo.modules.distributed import gather_rows, share_of_mean
from zoo.modules.dropout import Dropout
from zoo.modules.embeddings import LearnedPositions
from zoo.modules.losses import info_nce

NEG_INF = -1e9


@dataclass
class CapsuleOutput:
    """Everything the sparse capsule network computes (B users, L positions, C capsules)."""

    s: Tensor  # [B, L, C] item-capsule similarity (noisy in training), Eq. 7
    assign: Tensor  # [B, L] long, top-1 capsule a_i of each item (pads: meaningless), Eq. 8
    active: Tensor  # [B, C] bool, the activated set I_u
    o: Tensor | None  # [B, L] position-wise attention (None when ablated), Eq. 9
    q: Tensor  # [B, L, d] item interest features, Eq. 10
    interests: Tensor  # [B, C, d] capsules u_j after routing, Eqs. 11-14


class SparseInterestCapsules(nn.Module):
    """Sparse interest capsule activation + position-wise capsule network + routing.

    Args:
        d: hidden size d_n.  num_capsules: C (32).  max_len: N (for P~).
        routing_iters: tau (MIRACLE) / L_c (HORAE), 3.
        noise_scale / noise_floor: the activation noise (0.2, 0.01; code).
        dropout: dropout in the attention MLP and before the interest LayerNorm (0.3; code).
        sparse_activation: top-1 sparse activation (False = "w/o SS": all capsules active).
        position_attention: the position-wise attention o (False = "w/o PW": o_i = 1).
        attention_activation: ``"leaky_relu"`` (official code, default) or ``"tanh"`` (paper Eq. 9).
        routing_agreement: ``"q"`` (both codes, HORAE Eq. 22; default) or ``"h"`` (MIRACLE Eq. 14).
    """

    def __init__(
        self,
        d: int,
        num_capsules: int = 32,
        max_len: int = 20,
        routing_iters: int = 3,
        noise_scale: float = 0.2,
        noise_floor: float = 0.01,
        dropout: float = 0.3,
        sparse_activation: bool = True,
        position_attention: bool = True,
        attention_activation: str = "leaky_relu",
        routing_agreement: str = "q",
    ) -> None:
        super().__init__()
        if attention_activation not in ("tanh", "leaky_relu"):
            raise ValueError(f"attention_activation must be 'tanh' or 'leaky_relu', got {attention_activation!r}")
        if routing_agreement not in ("q", "h"):
            raise ValueError(f"routing_agreement must be 'q' (code) or 'h' (MIRACLE Eq. 14), got {routing_agreement!r}")
        self.routing_agreement = routing_agreement
        if routing_iters < 1:
            raise ValueError(f"routing_iters must be >= 1, got {routing_iters}")
        self.num_capsules, self.routing_iters = num_capsules, routing_iters
        self.noise_scale, self.noise_floor = noise_scale, noise_floor
        self.sparse_activation, self.position_attention = sparse_activation, position_attention
        self.base_vectors = nn.Parameter(torch.randn(num_capsules, d) * 0.02)  # A [C, d]
        self.position_embedding = LearnedPositions(max_len, d)  # P~
        act = nn.Tanh() if attention_activation == "tanh" else nn.LeakyReLU()  # Eq. 9 | the code
        self.attention = nn.Sequential(nn.Linear(d, d), Dropout(dropout), act, nn.Linear(d, 1))  # W_3, W_4
        self.interest_fc = nn.Linear(d, d)  # W_5, b_5
        self.interest_dropout = Dropout(dropout)
        self.interest_norm = nn.LayerNorm(d, eps=1e-12)

    # ------------------------------------------------------------------ pieces
    def similarity(self, h: Tensor) -> Tensor:
        """Eq. 7: ``h [..., d]`` -> ``s [..., C]``, with multiplicative noise in training."""
        s = h @ self.base_vectors.T
        if self.training and self.noise_scale > 0:
            s = s + torch.randn_like(s) * (self.noise_scale * s.detach() + self.noise_floor)
        return s

    def activate(self, s: Tensor, pad_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Eq. 8: top-1 capsule per item ``[B, L]`` and the per-user active set ``[B, C]``."""
        assign = s.argmax(-1)  # [B, L]
        if not self.sparse_activation:
            return assign, torch.ones(s.shape[0], self.num_capsules, dtype=torch.bool, device=s.device)
        hits = F.one_hot(assign, self.num_capsules).bool() & pad_mask[..., None]  # [B, L, C]
        active = hits.any(1)  # [B, C]
        return assign, active | ~pad_mask.any(1, keepdim=True)

    def position_weights(self, h: Tensor, pad_mask: Tensor, extra_attn: Tensor | None = None) -> Tensor:
        """Eq. 9 (MIRACLE) / Eq. 16 (HORAE, ``extra_attn`` = T~): ``o [B, L]``, sums to 1 over items."""
        x = h + self.position_embedding(pad_mask.long())  # [B, L, d]
        if extra_attn is not None:
            x = x + extra_attn
        e = self.attention(x).squeeze(-1).masked_fill(~pad_mask, NEG_INF)  # [B, L]
        return torch.softmax(e, dim=-1)

    def interest_features(self, h: Tensor) -> Tensor:
        """Eq. 10 / Eq. 17: ``q = LN(Dropout(tanh(h W_5 + b_5) + h))`` ``[B, L, d]``."""
        return self.interest_norm(self.interest_dropout(torch.tanh(self.interest_fc(h)) + h))

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        h: Tensor,
        pad_mask: Tensor,
        extra_attn: Tensor | None = None,
        forced_active: Tensor | None = None,
        forced_assign: Tensor | None = None,
    ) -> CapsuleOutput:
        """h ``[B, L, d]`` contextualised items, pad_mask ``[B, L]`` (True = real item).

        ``forced_active [B, C]`` / ``forced_assign [B, L]`` replace this sequence's own
        activation (the augmented copy in the interest-level contrastive losses must activate
        the original's capsules); the routing logits still start from its own ``s``.
        """
        s = self.similarity(h)  # [B, L, C]
        assign, active = self.activate(s, pad_mask)
        if forced_active is not None:
            active = forced_active
        if forced_assign is not None:
            assign = forced_assign
        o = self.position_weights(h, pad_mask, extra_attn) if self.position_attention else None  # [B, L]
        q = self.interest_features(h)  # [B, L, d]
        u = dynamic_routing(
            q,
            pad_mask,
            iters=self.routing_iters,
            init_logits=s.transpose(1, 2),  # b^(0) = s, laid out [B, C, L]
            capsule_mask=active,
            item_weights=o,
            detach_intermediate=False,
            agreement_vectors=h if self.routing_agreement == "h" else None,
        )  # [B, C, d]
        return CapsuleOutput(s=s, assign=assign, active=active, o=o, q=q, interests=u)


# ---------------------------------------------------------------------- interest sequencing (HORAE)
def gather_activated(interests: Tensor, assign: Tensor) -> Tensor:
    """HORAE Eq. 23: ``[u_{a_1}, ..., u_{a_L}]``; interests ``[B, C, d]``, assign ``[B, L]`` -> ``[B, L, d]``."""
    return interests.gather(1, assign[..., None].expand(-1, -1, interests.shape[-1]))


def last_position_per_capsule(assign: Tensor, pad_mask: Tensor, num_capsules: int) -> Tensor:
    """HORAE Eq. 28: for each capsule the latest real position that activated it, -1 if none.

    assign ``[B, L]``, pad_mask ``[B, L]`` -> ``[B, C]`` long.
    """
    L = assign.shape[1]
    hits = F.one_hot(assign, num_capsules).bool() & pad_mask[..., None]  # [B, L, C]
    pos = torch.arange(L, device=assign.device)[None, :, None]  # [1, L, 1]
    return torch.where(hits, pos, torch.full_like(pos, -1)).amax(1)  # [B, C]


def read_out_interests(h_hat: Tensor, last_pos: Tensor) -> Tensor:
    """HORAE Eq. 29: ``u_bar_j = h_hat[j_max]``; zero for capsules never activated.

    h_hat ``[B, L, d]``, last_pos ``[B, C]`` (from :func:`last_position_per_capsule`) -> ``[B, C, d]``.
    """
    idx = last_pos.clamp(min=0)[..., None].expand(-1, -1, h_hat.shape[-1])  # [B, C, d]
    return h_hat.gather(1, idx) * (last_pos >= 0)[..., None].to(h_hat.dtype)


# ---------------------------------------------------------------------- regularisers and losses
def capsule_balance_loss(s: Tensor, valid: Tensor | None = None, gather: bool = True) -> Tensor:
    """Load balance l_b (MIRACLE Eqs. 19-21, HORAE Eqs. 34-36), as the official code computes it.

    The printed ``C * w^T r`` with ``m in {0, -inf}`` does not compute; the code uses the
    Switch-Transformer form ``sum_j f_j p_j`` with f the fraction of items whose top-1 capsule
    is j (no gradient) and p the mean routing probability ``softmax(s)`` (no factor C).

    s ``[..., C]`` similarities; valid ``[...]`` bool, the rows that count (non-pad items).
    gather: under DDP, f and p are over every process's rows (``gather_rows``; every process then
    computes the same loss, and DDP's averaging gives one process's gradient on the whole batch);
    False where the rows are the same on every process (the whole catalogue).
    """
    C = s.shape[-1]
    probs = torch.softmax(s.reshape(-1, C), dim=-1)  # [M, C]
    if valid is not None:
        probs = probs[valid.reshape(-1)]
    if gather:
        probs = gather_rows(probs)[0]  # [M', C]; before any early return: every process gathers
    if probs.shape[0] == 0:
        return s.sum() * 0.0
    f = torch.bincount(probs.argmax(-1), minlength=C).to(probs.dtype) / probs.shape[0]  # [C]
    return (f * probs.mean(0)).sum()


def capsule_orthogonality_loss(base_vectors: Tensor, tau: float = 0.1) -> Tensor:
    """Orthogonality l_c (MIRACLE Eq. 18, HORAE Eq. 33) as InfoNCE over the normalised base
    vectors with temperature tau = 0.1 (code; the printed ``-log(cos / sum cos)`` has no exp and
    is undefined when the sum of cosines is <= 0)."""
    return info_nce(base_vectors, base_vectors, tau=tau, normalize=True)


def random_item_mask(item_seq: Tensor, ratio: float, min_len: int = 5) -> Tensor:
    """Items to replace by [MASK] (MIRACLE Sec. 3.4.1, HORAE Sec. 3.5.5): Bernoulli(ratio) over
    real items, never the most recent one (slot L-1), never in sequences shorter than ``min_len``.

    item_seq ``[B, L]`` (left-padded) -> ``[B, L]`` bool.
    """
    real = item_seq > 0
    mask = (torch.rand(item_seq.shape, device=item_seq.device) < ratio) & real
    mask[:, -1] = False
    return mask & (real.sum(1, keepdim=True) >= min_len)


def interest_contrastive_loss(
    interests: Tensor, interests_aug: Tensor, assign: Tensor, item_mask: Tensor, tau: float = 1.0
) -> Tensor:
    """Interest-level contrastive loss (MIRACLE Eq. 15 l_i, HORAE Eq. 45 L_aug).

    For each masked item (b, i), the anchor is the original interest of the capsule a_bi that
    item activated, ``interests[b, a_bi]``, its positive the same capsule of the augmented
    sequence (whose activation was forced to the original's), ``interests_aug[b, a_bi]``; the
    other masked items of the batch are negatives (under DDP: of every process's batch,
    ``gather_rows``, the mean over all of them as DDP averages).  Raw dot products (``tau = 1``,
    code and paper), mean over the B_m masked items; 0 (with a graph) when nothing is masked.

    interests / interests_aug ``[B, C, d]``, assign ``[B, L]``, item_mask ``[B, L]`` bool.
    """
    b, i = item_mask.nonzero(as_tuple=True)  # [B_m] each
    j = assign[b, i]  # [B_m]
    positives, offset = gather_rows(interests_aug[b, j])  # [B_m', d]: every process's masked items
    if b.numel() == 0:
        return (interests.sum() + interests_aug.sum() + positives.sum()) * 0.0
    loss = info_nce(interests[b, j], positives, tau=tau, normalize=False, offset=offset)
    return share_of_mean(loss, b.numel(), positives.shape[0])
