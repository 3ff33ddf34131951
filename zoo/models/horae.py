"""HORAE (Hu et al., ACM TOIS 2025): temporal multi-interest pre-training — MIRACLE + time + refinement.

Everything of :class:`zoo.models.miracle.MIRACLE` (text features, MoE adaptor, sparse capsules,
balance / orthogonality losses, interest-level contrastive loss, pre-train / fine-tune stages,
inductive / transductive settings) is inherited; this file adds only what HORAE adds
(equation numbers of the HORAE paper; spec ``shared/specs/horae.md``):

    d^a_i = t_{i+1} - t_i (d^a_N = t_{N+1} - t_N),  d^t_i = t_{N+1} - t_i      [B, L]   (Sec. 3.2.2)
    bins f_t: thresholds 1,2,4,7,14,30,60,120,180,365,730,1825 x tau; 12 = beyond; 13 = pad  (Eq. 5)
    t_i = D_a[f(d^a_i)] + D_t[f(d^t_i)]                                         [B, L, d] (Eq. 6)
    H = RoTransformer(Dropout(LN(x + p + t (+ e))))      bidirectional, RoPE     [B, L, d] (Eqs. 7-13)
    o = softmax(att(H + P~ + T~)), T~ from the capsule-side tables D~              [B, L]    (Eq. 16)
    U = sparse capsules (MIRACLE), the PRE-refined interests                     [B, C, d] (Eqs. 14-22)
    F0 = [u_{a_1} .. u_{a_N}]                                                    [B, L, d] (Eq. 23)
    H_bar = RoTransformer_refine(F0)  (causal, code)                              [B, L, d] (Eq. 24)
    H_hat = sigmoid(GRU(H) W_6 + b_6) * H_bar                                     [B, L, d] (Eqs. 25-27)
    U_bar_j = H_hat[last i with a_i = j]  (POST-refined interests, 0 if inactive)  [B, C, d] (Eqs. 28-29)
    score(v) = max_{j in I_u} <u_bar_j, y_v>                                              (Eq. 31)

Pre-training (Eq. 46): L_rec (in-batch, post-refined) + theta_1 L_intra (Eq. 32) + theta_2 L_inter
(= L_c + L_b, Eqs. 33-37) + theta_3 L_pre-post (anchor-based contrastive, Eqs. 38-44, with
beta L_rec^pre) + theta_4 L_aug (MIRACLE's l_i on post-refined interests, Eq. 45).  Weights: the
code's theta_1 = 0.05 (``intra_weight``), 10 on L_b and 0.01 on L_c, theta_3 = 0.05
(``pre_post_weight``), theta_4 = 0.001 (``contrastive_weight``), beta = 0.05 (the paper gives
none).  Fine-tuning (Eqs. 47-48): full CE + 10 L_b + 0.01 L_c, with the recipe's
``freeze: [position_embedding, encoder, refine_encoder, time_embedding, fusion_gate]`` (the
paper's [P, FFN, RoMHA, GRU] + temporal encoder; the code also freezes W_6 inside the gate).

Paper vs official code (``WHUIR/Horae`` 605b1fc; spec ``horae.md`` §9).  The default is what
produced the paper's tables, the authors' code, except clear bugs (DESIGN.md "Decisions"); the
other form is a switch.  MIRACLE's rows (``score_with_id``, ``attention_activation`` (Eq. 16
here), ``train_mask_token``, ``mask_pad_logit``, the loss forms) carry over with the same
defaults:

| switch | paper form | code form | default | why |
|---|---|---|---|---|
| ``rope`` | ``"qk"``: rotate queries and keys (Eq. 13), relative attention | ``"qv"``: rotates queries and VALUES, keys untouched | ``"qk"`` (paper) | clear bug: the code calls ``rotate_queries_or_keys`` on the values because its key tensor is laid out ``[B, h, d_h, N]``; its comment says "use RoPE", and rotating values is not RoPE (H1) |
| ``overflow_to_pad`` | ``False``: gaps of 5 years or more get their own bin 12 (Eq. 5) | ``True``: they are filed under the pad bin 13 (its comment says "# >5year 12") | ``False`` (paper) | clear bug (H3) |
| ``intra_mode`` | ``"paper"``: mean over real positions of ``‖h_hat_i - h_i‖₂`` (Eq. 32) | ``"code"``: ``‖H2_i - u_(a_i)‖₂``, H2 a second encoder pass, PRE-refined capsule, mean per (user, capsule), then over active pairs | ``"code"`` | produced the tables (H7) |
| ``intra_include_pads`` | silent | ``True``: the pad positions' distances enter each capsule's mean in ``intra_mode="code"`` | ``False`` | clear bug: padding is not an item of the user |
| ``anchor_capsule`` | ``"maxpool"``: max over capsules in each likelihood (Eqs. 40/42) | ``"target_argmax"``: one capsule per user, the argmax of the post-refined own-target score, for all three | ``"target_argmax"`` (code) | produced the tables (H8) |
| ``anchor_mask_items`` | ``False``: only F0 entries are [MASK_1] (Eq. 41) | ``True``: the same items are also [MASK_2] in the gate GRU's input | ``True`` (code) | produced the tables (H9) |
| ``contrastive_weight`` | 0.05: theta_4, the best value of Sec. 5.3 | 0.001 (``seq_cons_alpha``) | ``0.001`` (code) | produced the tables (H11) |
| ``orthogonality_weight`` | 10: one theta_2 (theta_5) on L_inter = L_c + L_b (Eqs. 46, 48) | 0.01 on L_c, 10 on L_b | ``0.01`` (code) | produced the tables (H12, H13) |
| ``gru_zero_pads`` | silent | ``False``: the gate GRU runs over the encoder's outputs at the left pads first | ``False`` (code) | produced the tables (H6); ``True`` zeroes them (an empty prefix) |
| ``refine_causal`` | silent ("another Transformer with RoPE") | ``True``: causal refine encoder, no input LN / dropout / positions | ``True`` (code) | H5 |
| ``target_time_source`` | ``"target"``: d^t uses the target's timestamp | ``"target"`` | ``"target"`` (both) | ``"last_history"`` is the zoo's leakage-free variant (H19) |

Ablations (Table 8), one init arg each: ``interest_intra=False`` (w/o L_intra),
``interest_inter=False`` (w/o L_inter), ``anchor_contrastive=False`` (w/o L_pre-post),
``refiner=False`` (w/o Refiner: H_bar = F0), ``fusion_gate=False`` (w/o Gate: H_hat = H_bar),
``rope="none"`` (w/o RoPE), ``adjacent_interval=False`` (w/o d^a), ``target_interval=False``
(w/o d^t); plus MIRACLE's ``interest_contrastive=False`` (no L_aug).  The paper lists L_inter
among the pre-training tasks, but fine-tuning has theta_5 L_inter too (Eq. 48); ``interest_inter``
drops it in whichever stage it is set, and ``zoo ablate`` sets every row in both stages.  The
"w/o RoPE" row was measured against the code's ``rope="qv"`` (the zoo's default is ``"qk"``).
Fig. 7: ``gate_backbone="self_attention"`` (one causal self-attention layer instead of the gate's
GRU), and ``temporal_encoding`` in place of the time binning f_t (Sec. 5.3).  The paper gives each
of these one sentence and no code, so the two variants below are the zoo's reading of it:

* ``"binning"`` (the model): Eqs. 5-6, ``t_i`` added to the encoder input (Eq. 7) and ``t~_i`` to
  the capsule attention (Eq. 16).
* ``"relation_matrix"``, TiSASRec (Li et al., WSDM 2020):
  ``r_ij = min(k, floor(|t_i - t_j| / r_min))`` for every pair of real positions, ``r_min`` the
  smallest non-zero gap of the window (TiSASRec: of the user's sequence; a batch carries only the
  window) and ``k = relation_max_interval``; two learnable tables ``E^K, E^V [(k+1), d]`` give
  ``r^K_ij, r^V_ij [B, L, L, d]`` (with dropout, as TiSASRec), added to key j and value j of query
  i in every layer of the item encoder (Eqs. 8-9): ``e_ij = q_i (k_j + r^K_ij)^T / sqrt(d_h)``,
  ``z_i = sum_j a_ij (v_j + r^V_ij)``.  Why: the paper's "a learnable embedding matrix for relative
  time intervals in the self-attention network, similar to position embeddings, ... element-wise
  addition with the input embedding" is TiSASRec's mechanism, whose pairwise intervals have no
  one-vector-per-item form to put in x'_i; "input" is read as the attention's key/value inputs,
  where TiSASRec adds them.  Nothing replaces ``t~_i`` in Eq. 16: the paper explains this
  variant's lower scores by the other two also "adaptively adjust[ing] the routing weights", so
  this one does not reach the routing.  HORAE's P and RoPE stay (they play TiSASRec's absolute
  position K/V embeddings); the relation terms meet the un-rotated query.  The tables are
  ``time_embedding`` (frozen in fine-tuning like D); the target time is not used.
* ``"hawkes"``, Transformer Hawkes Process (Zuo et al., ICML 2020, Eq. 2):
  ``z(t)_j = cos(t / 10000^((j-1)/d))`` for odd j, ``sin(t / 10000^(j/d))`` for even j, of each
  item's timestamp in tau units measured from the window's oldest item (THP's event times are
  times since the sequence's start), 0 at pads; ``z(t_i)`` replaces ``t_i`` in Eq. 7 AND ``t~_i``
  in Eq. 16 (per the paper, Hawkes, like binning, adjusts the routing weights).  Why: "Hawkes
  encoding for each item in the sequence based on timestamp information" names the item's own
  timestamp, as THP encodes it, rather than z of d^a and d^t (which "replace f_t" alone might
  suggest).  Parameter-free (no D, no D~); the target time is not used.  The paper's Eq. 2 is
  used; THP's released code pairs the frequencies as the original Transformer does (sin at even
  0-based channels, ``10000^(2 floor(k/2)/d)``).

Neither variant uses d^a or d^t, so ``adjacent_interval`` / ``target_interval`` must stay True
with them (an error otherwise); ``overflow_to_pad`` and ``target_time_source`` then do nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.models.miracle import MIRACLE, InterestState
from zoo.modules.distributed import gather_rows, share_of_mean
from zoo.modules.sparse_capsules import gather_activated, last_position_per_capsule, random_item_mask, read_out_interests
from zoo.modules.temporal import (
    HORAE_THRESHOLDS,
    RelationEmbedding,
    adjacent_gaps,
    hawkes_encoding,
    target_gaps,
    threshold_bins,
)
from zoo.modules.transformer import TransformerEncoder, init_weights

TEMPORAL_ENCODINGS: tuple[str, ...] = ("binning", "relation_matrix", "hawkes")  # Fig. 7

# the paper, read by `zoo models` from the source (zoo/catalog.py) without importing this file
PAPER = {"title": "HORAE: Temporal Multi-Interest Pre-training for Sequential Recommendation", "authors": "Hu et al.", "venue": "ACM TOIS 2025"}


@dataclass
class Refinement:
    """Sequential interest refinement of one pass (Eqs. 23-29)."""

    f0: Tensor  # [B, L, d] reordered interests F0
    h_bar: Tensor  # [B, L, d] refine-encoder output H_bar
    h_hat: Tensor  # [B, L, d] gated H_hat
    last_pos: Tensor  # [B, C] j_max (-1 if never activated)
    interests: Tensor  # [B, C, d] post-refined U_bar


@dataclass
class RefinedState(InterestState):
    """MIRACLE's state (``interests`` = post-refined U_bar) plus the refinement."""

    pre_interests: Tensor | None = None  # [B, C, d] U (pre-refined)
    refinement: Refinement | None = None


class FusionGate(nn.Module):
    """Eqs. 25-27: ``H_hat = sigmoid(GRU(H) W_6 + b_6) * H_bar``; Fig. 7's variant replaces the GRU
    by one causal self-attention layer (``encoder``, given by the model)."""

    def __init__(self, d: int, zero_pads: bool = True, encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.zero_pads = zero_pads
        self.backbone = "gru" if encoder is None else "self_attention"
        if encoder is None:
            self.gru = nn.GRU(d, d, batch_first=True)  # PyTorch default init (code)
        else:
            self.encoder = encoder  # Fig. 7: self-attention instead of the GRU
        self.gate = nn.Linear(d, d)  # W_6, b_6

    def forward(self, h: Tensor, h_bar: Tensor, pad_mask: Tensor) -> Tensor:
        """h, h_bar ``[B, L, d]``, pad_mask ``[B, L]`` -> ``[B, L, d]``."""
        if self.zero_pads:
            h = h * pad_mask[..., None].to(h.dtype)
        if self.backbone == "gru":
            h_prime, _ = self.gru(h)  # [B, L, d]
        else:
            h_prime = self.encoder(h, pad_mask)  # [B, L, d]
        return torch.sigmoid(self.gate(h_prime)) * h_bar


class IntervalEmbedding(nn.Module):
    """Eq. 6: ``t_i = D_a[bin(d^a_i)] + D_t[bin(d^t_i)]`` (two 14-row tables = one 28-row D)."""

    def __init__(self, n_bins: int, d: int) -> None:
        super().__init__()
        self.adjacent = nn.Embedding(n_bins, d)  # rows 0..N_a-1 of D
        self.target = nn.Embedding(n_bins, d)  # rows N_a..N_a+N_t-1 of D

    def forward(self, adj_bins: Tensor | None, tgt_bins: Tensor | None) -> Tensor | None:
        out = None
        for table, bins in ((self.adjacent, adj_bins), (self.target, tgt_bins)):
            if bins is not None:
                out = table(bins) if out is None else out + table(bins)
        return out


class HawkesTimeEncoding(nn.Module):
    """Fig. 7 "Hawkes Encoding": THP's z(t) of each item's time since the window's oldest item."""

    def __init__(self, d: int, time_scale: float) -> None:
        super().__init__()
        self.d, self.time_scale = d, time_scale

    def forward(self, time_seq: Tensor, pad_mask: Tensor) -> Tensor:
        """time_seq ``[B, L]`` int64 seconds, pad_mask ``[B, L]`` -> ``[B, L, d]`` (0 at pads)."""
        never = torch.iinfo(time_seq.dtype).max
        origin = time_seq.masked_fill(~pad_mask, never).amin(1, keepdim=True)  # [B, 1] oldest real item
        since = torch.where(pad_mask, time_seq - origin, torch.zeros_like(time_seq))  # [B, L] seconds
        z = hawkes_encoding(since.to(torch.float64) / self.time_scale, self.d)  # [B, L, d]
        return z * pad_mask[..., None].to(z.dtype)


class HORAE(MIRACLE):
    """HORAE: MIRACLE with time-interval embeddings, RoPE, interest refinement and its losses.

    Args (beyond :class:`MIRACLE`'s, whose defaults HORAE keeps except where listed):
        time_scale: tau in seconds (86400 Amazon days; 60 Online Retail minutes).
        rope: ``"qk"`` (paper), ``"qv"`` (code) or ``"none"`` (w/o RoPE), encoder and refiner.
        adjacent_interval / target_interval: use d^a / d^t (w/o d^a, w/o d^t).
        refiner / fusion_gate: Interest Refine Encoder / Fusion Gate (w/o Refiner, w/o Gate).
        interest_intra / interest_inter / anchor_contrastive: L_intra / L_inter / L_pre-post.
        intra_mode: ``"code"`` (default) or ``"paper"`` (see the module docstring).
        intra_include_pads: ``intra_mode="code"`` only: count the pad positions in each
            capsule's mean, as the authors' code (a bug; default False).
        overflow_to_pad: file gaps >= the last threshold under the pad bin (the code's bug).
        target_time_source: ``"target"`` (paper) or ``"last_history"`` (no target timestamp).
        refine_causal: causal refinement Transformer (code; the paper does not say).
        gru_zero_pads: zero the gate GRU's input at pads (default False = code).
        gate_backbone: ``"gru"`` (the model) or ``"self_attention"`` (Fig. 7: one causal Transformer
            layer with the encoder's heads, FFN size and dropout, instead of the GRU).
        temporal_encoding: ``"binning"`` (the model, Eqs. 5-6), ``"relation_matrix"`` (Fig. 7:
            TiSASRec's clipped pairwise intervals as K/V additions in the encoder's attention) or
            ``"hawkes"`` (Fig. 7: THP's sinusoidal encoding of each item's time, in place of t_i
            and t~_i); the module docstring gives the reading of each.
        relation_max_interval: k, the clipping threshold of ``"relation_matrix"`` (TiSASRec's
            time span; 256).
        anchor_capsule: ``"target_argmax"`` (code, default) or ``"maxpool"`` (paper Eqs. 40/42).
        anchor_mask_items: also mask the anchor's items in the gate's input (code, default).
        intra_weight: theta_1 (0.05).  pre_post_weight: theta_3 (0.05).  pre_post_beta: beta (0.05).
        orthogonality_weight: weight on L_c (code 0.01, default; the paper's theta_2 = theta_5 = 10).
        contrastive_weight: theta_4 on L_aug (code 0.001, default; paper 0.05).
    """

    @property
    def pad_invariant(self) -> bool:  # type: ignore[override]
        """Only without the Fusion Gate: its GRU runs over the pad positions too (official code)."""
        return not self.use_fusion_gate

    PAPER_FREEZE: tuple[str, ...] = ("position_embedding", "encoder", "refine_encoder", "time_embedding", "fusion_gate")

    def __init__(
        self,
        time_scale: float = 86400.0,
        rope: str = "qk",
        adjacent_interval: bool = True,
        target_interval: bool = True,
        refiner: bool = True,
        fusion_gate: bool = True,
        interest_intra: bool = True,
        interest_inter: bool = True,
        anchor_contrastive: bool = True,
        intra_mode: str = "code",
        intra_include_pads: bool = False,
        overflow_to_pad: bool = False,
        target_time_source: str = "target",
        refine_causal: bool = True,
        gru_zero_pads: bool = False,
        gate_backbone: str = "gru",
        temporal_encoding: str = "binning",
        relation_max_interval: int = 256,
        anchor_capsule: str = "target_argmax",
        anchor_mask_items: bool = True,
        intra_weight: float = 0.05,
        pre_post_weight: float = 0.05,
        pre_post_beta: float = 0.05,
        orthogonality_weight: float = 0.01,
        contrastive_weight: float = 0.001,
        **kwargs: Any,
    ) -> None:
        for name, value, allowed in (
            ("intra_mode", intra_mode, ("paper", "code")),
            ("gate_backbone", gate_backbone, ("gru", "self_attention")),
            ("temporal_encoding", temporal_encoding, TEMPORAL_ENCODINGS),
            ("target_time_source", target_time_source, ("target", "last_history")),
            ("anchor_capsule", anchor_capsule, ("maxpool", "target_argmax")),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if time_scale <= 0:
            raise ValueError(f"time_scale must be > 0 seconds, got {time_scale}")
        if temporal_encoding != "binning" and not (adjacent_interval and target_interval):
            raise ValueError(
                f"adjacent_interval / target_interval switch off the time bins' d^a / d^t; temporal_encoding="
                f"{temporal_encoding!r} uses neither (set both True, or temporal_encoding='binning')"
            )
        if relation_max_interval < 1:
            raise ValueError(f"relation_max_interval must be >= 1, got {relation_max_interval}")
        super().__init__(rope=rope, orthogonality_weight=orthogonality_weight, contrastive_weight=contrastive_weight, **kwargs)
        hp = self.hparams
        d = hp["d"]
        self.time_scale, self.overflow_to_pad, self.target_time_source = time_scale, overflow_to_pad, target_time_source
        self.adjacent_interval, self.target_interval = adjacent_interval, target_interval
        self.use_refiner, self.use_fusion_gate = refiner, fusion_gate
        self.interest_intra, self.anchor_contrastive = interest_intra, anchor_contrastive
        self.inter_losses = interest_inter
        self.intra_mode, self.anchor_capsule, self.anchor_mask_items = intra_mode, anchor_capsule, anchor_mask_items
        self.intra_include_pads = intra_include_pads
        self.intra_weight, self.pre_post_weight, self.pre_post_beta = intra_weight, pre_post_weight, pre_post_beta

        self.temporal_encoding = temporal_encoding
        # the encoder-side temporal module is always `time_embedding` (PAPER_FREEZE names it)
        self.time_embedding: nn.Module
        self.capsule_time_embedding: IntervalEmbedding | None = None
        if temporal_encoding == "binning":
            n_bins = len(HORAE_THRESHOLDS) + 2  # 12 thresholds -> bins 0..12 real, 13 = pad
            self.time_embedding = IntervalEmbedding(n_bins, d)  # D (encoder side), frozen in fine-tuning
            self.capsule_time_embedding = IntervalEmbedding(n_bins, d)  # D~ (capsule side), trainable
        elif temporal_encoding == "relation_matrix":  # Fig. 7
            self.time_embedding = RelationEmbedding(relation_max_interval, d, hp["dropout"])
        else:  # Fig. 7, "hawkes": no parameters
            self.time_embedding = HawkesTimeEncoding(d, time_scale)
        self.refine_encoder = TransformerEncoder(
            d, hp["n_layers"], hp["n_heads"], hp["d_ff"], hp["dropout"], causal=refine_causal, rope=rope
        )
        gate_encoder = None
        if gate_backbone == "self_attention":  # Fig. 7
            gate_encoder = TransformerEncoder(d, 1, hp["n_heads"], hp["d_ff"], hp["dropout"], causal=True)
            gate_encoder.apply(init_weights)
        self.fusion_gate = FusionGate(d, zero_pads=gru_zero_pads, encoder=gate_encoder)
        self.interest_mask_token = nn.Parameter(torch.randn(d) * 0.02)  # [MASK_1]; mask_token is [MASK_2]
        for module in (self.time_embedding, self.capsule_time_embedding, self.refine_encoder, self.fusion_gate.gate):
            if module is not None:
                module.apply(init_weights)

    # ------------------------------------------------------------------ time features
    def time_bins(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Eq. 5: adjacent and target interval bins ``[B, L]`` each (pad bin 13 at pads)."""
        time_seq, pad_mask = batch["time_seq"], batch["item_seq"] > 0
        t_next = batch["target_time"] if self.target_time_source == "target" else time_seq[:, -1]  # [B]
        bins = [
            threshold_bins(gap, pad_mask, self.time_scale, HORAE_THRESHOLDS, self.overflow_to_pad)
            for gap in (adjacent_gaps(time_seq, pad_mask, t_next), target_gaps(time_seq, pad_mask, t_next))
        ]
        return bins[0], bins[1]

    def _temporal_inputs(self, batch: dict[str, Tensor]) -> tuple[Tensor | None, Tensor | None]:
        """``(t, t~)``, each ``[B, L, d]`` or None: the encoder input's and the capsule attention's
        time term (Eqs. 6-7, 16), per ``temporal_encoding``."""
        if self.temporal_encoding == "relation_matrix":
            return None, None  # time enters the encoder's attention only (_attention_relation)
        if self.temporal_encoding == "hawkes":
            z = self.time_embedding(batch["time_seq"], batch["item_seq"] > 0)  # [B, L, d]
            return z, z
        adj, tgt = self.time_bins(batch)
        adj = adj if self.adjacent_interval else None
        tgt = tgt if self.target_interval else None
        return self.time_embedding(adj, tgt), self.capsule_time_embedding(adj, tgt)  # t_i (Eq. 6), t~_i (Eq. 16)

    def _attention_relation(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor] | None:
        """Fig. 7 relation matrix: ``(r^K, r^V)``, each ``[B, L, L, d]``, for every encoder layer."""
        if self.temporal_encoding != "relation_matrix":
            return None
        return self.time_embedding(batch["time_seq"], batch["item_seq"] > 0)

    # ------------------------------------------------------------------ refinement
    def refine(
        self, h_gate: Tensor, interests: Tensor, assign: Tensor, pad_mask: Tensor, interest_mask: Tensor | None = None
    ) -> Refinement:
        """Eqs. 23-29 from pre-refined ``interests [B, C, d]`` and the activation ``assign [B, L]``.

        ``h_gate [B, L, d]`` feeds the fusion gate's GRU; ``interest_mask [B, L]`` replaces those
        entries of F0 by [MASK_1] (the anchor of Eqs. 41-42).
        """
        f0 = gather_activated(interests, assign)  # [B, L, d]
        if interest_mask is not None:
            f0 = torch.where(interest_mask[..., None], self._mask_vector(self.interest_mask_token), f0)
        h_bar = self.refine_encoder(f0, pad_mask) if self.use_refiner else f0  # [B, L, d]
        h_hat = self.fusion_gate(h_gate, h_bar, pad_mask) if self.use_fusion_gate else h_bar  # [B, L, d]
        last_pos = last_position_per_capsule(assign, pad_mask, interests.shape[1])  # [B, C]
        return Refinement(f0=f0, h_bar=h_bar, h_hat=h_hat, last_pos=last_pos, interests=read_out_interests(h_hat, last_pos))

    def forward_interests(
        self, batch: dict[str, Tensor], item_mask: Tensor | None = None, forced: InterestState | None = None
    ) -> RefinedState:
        x, h, caps = self.capsule_stage(batch, item_mask, forced)
        ref = self.refine(h, caps.interests, caps.assign, batch["item_seq"] > 0)
        return RefinedState(
            x=x, h=h, caps=caps, interests=ref.interests, active=caps.active, pre_interests=caps.interests, refinement=ref
        )

    # ------------------------------------------------------------------ pre-training losses
    def extra_pretrain_losses(self, batch: dict[str, Tensor], state: InterestState, y: Tensor) -> dict[str, Tensor]:
        assert isinstance(state, RefinedState)
        terms: dict[str, Tensor] = {}
        if self.interest_intra and self.intra_weight:
            terms["intra"] = self.intra_weight * self.intra_loss(batch, state)
        if self.anchor_contrastive and self.pre_post_weight:
            terms["pre_post"] = self.pre_post_weight * self.pre_post_loss(batch, state, y)
        return terms

    def intra_loss(self, batch: dict[str, Tensor], state: RefinedState) -> Tensor:
        """Eq. 32, L_intra (``intra_mode``: paper or code, see the module docstring)."""
        pad_mask = batch["item_seq"] > 0
        if self.intra_mode == "paper":
            dist = _l2(state.refinement.h_hat - state.h)  # [B, L]
            return dist[pad_mask].mean()
        _, h2 = self.encode(batch)  # second encoder pass, fresh dropout
        dist = _l2(h2 - gather_activated(state.pre_interests, state.caps.assign))  # [B, L]
        C = state.pre_interests.shape[1]
        hits = F.one_hot(state.caps.assign, C).to(dist.dtype)  # [B, L, C]
        if not self.intra_include_pads:
            hits = hits * pad_mask[..., None]
        count = hits.sum(1)  # [B, C]
        per_capsule = torch.einsum("blc,bl->bc", hits, dist) / count.clamp(min=1)  # [B, C]
        return per_capsule[(count > 0) & state.caps.active].mean()  # the code: active capsules only

    def anchor_refinement(self, batch: dict[str, Tensor], state: RefinedState, item_mask: Tensor) -> Refinement:
        """Eqs. 41-42: the post-refined interests when the F0 entries under ``item_mask [B, L]`` are
        [MASK_1] (and, with ``anchor_mask_items``, the same items are [MASK_2] in the gate's input)."""
        h_gate = self.encode(batch, item_mask)[1] if self.anchor_mask_items else state.h
        return self.refine(h_gate, state.pre_interests, state.caps.assign, batch["item_seq"] > 0, interest_mask=item_mask)

    def pre_post_loss(self, batch: dict[str, Tensor], state: RefinedState, y: Tensor) -> Tensor:
        """Eqs. 38-44: ``-log s(S_post - S_a) - log s(S_a - S_pre) + beta L_rec^pre``; the softmaxes
        over the batch's targets (under DDP every process's, ``gather_rows``)."""
        item_mask = random_item_mask(batch["item_seq"], self.mask_ratio, self.mask_min_len)  # [B, L]
        anchor = self.anchor_refinement(batch, state, item_mask)
        B = y.shape[0]
        rows = torch.arange(B, device=y.device)
        y_all, offset = gather_rows(y)  # [B', d]
        labels = rows + offset  # [B]: each row's own target among y_all
        logits_pre = self.in_batch_logits(state.pre_interests, state.active, y_all)  # [B, B'], Eq. 40
        if self.anchor_capsule == "maxpool":
            logits_post = self.in_batch_logits(state.interests, state.active, y_all)  # Eq. 31
            logits_anchor = self.in_batch_logits(anchor.interests, state.active, y_all)  # Eq. 42
            logits_pre_s = logits_pre
        else:  # code: one capsule per user, argmax of the post-refined own-target score
            own = torch.einsum("bkd,bd->bk", state.interests, y).masked_fill(~state.active, float("-inf"))  # [B, C]
            j = own.argmax(1)  # [B]
            logits_post, logits_anchor, logits_pre_s = (
                u[rows, j] @ y_all.T for u in (state.interests, anchor.interests, state.pre_interests)
            )  # [B, B'] each
        s_post, s_anchor, s_pre = (torch.softmax(lg, 1)[rows, labels] for lg in (logits_post, logits_anchor, logits_pre_s))
        loss = -F.logsigmoid(s_post - s_anchor).mean() - F.logsigmoid(s_anchor - s_pre).mean()
        loss = loss + self.pre_post_beta * F.cross_entropy(logits_pre, labels)  # Eq. 44
        return share_of_mean(loss, B, y_all.shape[0])


def _l2(diff: Tensor) -> Tensor:
    """Euclidean norm over the last dim with a finite gradient at 0."""
    return (diff.pow(2).sum(-1) + 1e-12).sqrt()
