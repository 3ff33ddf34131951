"""TiSASRec (Li, Wang & McAuley, WSDM 2020): time interval aware self-attention.

SASRec whose attention also sees how far apart in time, and where in the window, every pair of
items is.  A baseline of HORAE's Table 7, TiMiRec's Table 2 (its Transformer block) and HM4SR's
Table 1.  Per user u (the paper's "personalized time intervals" and "time interval-aware
self-attention"; its text is not in the zoo's library, so no equation numbers are cited):

    r_ij = min(k, floor(|t_i - t_j| / r^u_min))              # [B, L, L] clipped interval ids (code: rounded)
    E = ItemEmb(s) -> (LayerNorm) -> dropout                  # [B, L, d]  NO input position
    r^K_ij = E^K_R[r_ij] + P^K_j,  r^V_ij = E^V_R[r_ij] + P^V_j  # [B, L, L, d] (dropout on each table)
    e_ij = q_i (k_j + r^K_ij)^T / sqrt(d_h),  a = softmax_{j<=i}(e)    causal, every layer
    z_i  = sum_j a_ij (v_j + r^V_ij)                          # then the point-wise FFN
    score(i) = <H[:, -1], ItemEmb(i)>                          # shared item table

with k = ``time_span`` and r^u_min the smallest non-zero gap of u's sequence.  The absolute
position embeddings P^K, P^V (one row per window slot) join the keys and values, not the input;
they are folded into the relation pair by broadcasting over the query index i, so the shared
attention (:mod:`zoo.modules.transformer`, ``relation=``) computes the whole layer and the clipped
matrix comes from :func:`zoo.modules.temporal.relation_intervals`.  Everything else
(item table, encoder block, ``loss`` switch, negatives, initialisation, full and sampled
evaluation) is :class:`zoo.models.sasrec.SASRec`'s, whose switches all apply.

Sources: the authors' code (github.com/JiachengLi1995/TiSASRec: ``model.py``, ``modules.py``,
``util.py``, ``main.py``) was read for every fact below; the paper's text is not in the zoo's
library, so its column holds only what secondary summaries of it state (the floor in r_ij, the
two position tables), "not checked" elsewhere.  The zoo's rule (DESIGN.md "Decisions") makes the
code's form the default; the one exception is the training setup the papers' tables share with
every baseline (loss, block), which stays the zoo SASRec's so that the TiSASRec - SASRec gap in
a zoo table measures the time intervals alone:

| switch | paper form | code form | default | why |
|---|---|---|---|---|
| ``interval_scale`` | r^u_min of u's sequence | the same, over the whole sequence before the split (``util.py`` ``cleanAndsort``; ReChorus: ``corpus.all_df``) | ``"user"`` (both) | the datamodule's ``user_time_origin`` / ``user_time_unit`` side info (``datamodules.base.user_time_scales``); ``"window"`` = the batch window's own minimum (HORAE's Fig. 7 reading; a model built without a datamodule) |
| ``interval_rounding`` | ``floor(\\|t_i - t_j\\| / r^u_min)`` | each timestamp scaled from u's first one and rounded (``round((t - t_1) / r^u_min)``, half to even), then differenced | ``"round"`` (code) | ``"floor"`` = the paper; the two differ by at most 1 |
| ``time_span`` | k, the clipping threshold | ``--time_span 256`` | ``256`` (code) | ReChorus's TiSASRec: ``time_max`` 512 |
| ``loss`` | not checked | binary cross-entropy, one negative per position (``model.py``) | ``"ce"`` (the zoo SASRec's) | the tables compare baselines under one setup; ``"bce"`` is the code's objective |
| ``train_negatives_exclude`` | not checked | the BCE negative avoids every training item of the user (``random_neq`` over ``user_train``) | ``"none"`` (``"ce"`` draws none) | ``loss="bce"`` with ``"history"`` is the code |
| ``n_heads`` | not checked | ``--num_heads 1`` | ``2`` (SASRec's class default) | ``recipes/tisasrec.yaml`` sets the code's 1 |
| ``d_ff`` | not checked | d (``feedforward`` with ``num_units=[d, d]``) | ``None`` (= 4d, the zoo SASRec's) | the shared block |
| ``activation`` | not checked | ReLU | ``"gelu"`` (the zoo SASRec's) | the shared block |
| ``attn_projection`` | not checked | no projection after the heads | ``True`` (the zoo SASRec's) | the shared block |
| ``input_layernorm`` | not checked | none; item embeddings scaled by sqrt(d) | ``True`` (the zoo SASRec's) | the shared block (a LayerNorm makes the scale moot) |
| ``ln_eps`` | not checked | 1e-8 | ``1e-12`` (the zoo SASRec's) | the shared block |
| ``init_std`` | not checked | TensorFlow's default Glorot-uniform | ``0.02`` (the zoo SASRec's) | RecBole's normal init |
| (no switch) block order | not checked | pre-LN: LayerNorm on the queries only (keys and values read the un-normalised states), residual from the normalised queries, a final LayerNorm | post-LN (the zoo's shared encoder) | the zoo SASRec's block |
| (no switch) regularisation | not checked | L2 5e-5 on every embedding table (``l2_emb``), Adam beta2 0.98 | ``weight_decay`` on all parameters, Adam's betas | the base optimiser |
| (no switch) evaluation | not checked | 100 sampled unseen items (``util.py`` ``evaluate``) | the table's protocol | each zoo table ranks every baseline alike |

Dropout on the K/V embeddings (``dropout``, as the code: on E^K_R[r], E^V_R[r], P^K and P^V
separately, before they are summed) and on the input item embeddings.  The code trains on each
user's last ``max_len`` training items only (one window and relation matrix per user,
``Relation``); the zoo's ``train_sampling: windows`` also tiles the older items into further
windows, as for SASRec.  With ``interval_scale="window"``
r_min is the window's, so a position's intervals depend on the window's later timestamps too (not
on their items); the code's (and ``"user"``'s) r^u_min likewise reads the user's whole sequence.

ReChorus's ``TiSASRec.py`` (the source of TiMiRec's column, spec ``timirec.md`` Sec. 7) differs from the authors' code in ways not
switched here: ``floor`` of the gap over a user minimum that is capped at 65,535 seconds (its
``0xFFFF`` fill of the zero gaps), ``time_max`` 512, no dropout on the K/V embeddings, BPR; with
``interval_rounding="floor"``, ``time_span=512`` and SASRec's ReChorus switches (``loss="bpr"``,
``recipes/sasrec_rechorus.yaml``) the zoo model comes close to it.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import Tensor

from zoo.models.sasrec import SASRec
from zoo.modules.dropout import Dropout
from zoo.modules.embeddings import LearnedPositions
from zoo.modules.temporal import RelationEmbedding
from zoo.modules.transformer import init_weights

# the paper, read by `zoo models` from the source (zoo/catalog.py) without importing this file
PAPER = {"title": "Time Interval Aware Self-Attention for Sequential Recommendation", "authors": "Li, Wang & McAuley",
         "venue": "WSDM 2020"}

INTERVAL_SCALES: tuple[str, ...] = ("user", "window")
INTERVAL_ROUNDINGS: tuple[str, ...] = ("round", "floor")


class TiSASRec(SASRec):
    """SASRec with TiSASRec's interval and position key/value embeddings in every attention layer.

    Padding-invariant (``pad_invariant``): pairs with a pad get interval 0 and are masked keys,
    positions are SASRec's right-aligned slots, and the per-user scale does not depend on the
    window, so neither left pads nor their timestamps reach a real position.

    Args:
        time_span: k, the clipping threshold of the intervals (the code's ``--time_span``, 256).
        interval_scale: r^u_min: ``"user"`` (the smallest non-zero gap of the user's whole
            sequence, from the datamodule's side info; paper and code) or ``"window"`` (of the
            batch's window; HORAE Fig. 7's reading, needs no side info).
        interval_rounding: ``"round"`` (the code: timestamps scaled by r^u_min from the user's
            first one, or the window's oldest with ``"window"``, rounded half to even, then
            differenced) or ``"floor"`` (the paper: ``floor(|t_i - t_j| / r^u_min)``).
        **kwargs: :class:`zoo.models.sasrec.SASRec` options (d, n_layers, n_heads, dropout,
            max_len, loss, position_index, ...) and the base's (num_items, lr, topk, ...).
    """

    pad_invariant = True

    def __init__(
        self,
        time_span: int = 256,
        interval_scale: str = "user",
        interval_rounding: str = "round",
        **kwargs: Any,
    ) -> None:
        if time_span < 1:
            raise ValueError(f"time_span must be >= 1, got {time_span}")
        for name, value, allowed in (("interval_scale", interval_scale, INTERVAL_SCALES),
                                     ("interval_rounding", interval_rounding, INTERVAL_ROUNDINGS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        super().__init__(**kwargs)
        hp = self.hparams
        d, dropout = hp["d"], hp["dropout"]
        self.time_span, self.interval_scale, self.interval_rounding = time_span, interval_scale, interval_rounding
        del self.pos_emb  # no input positions: P^K and P^V join the keys and values instead
        self.pos_key = LearnedPositions(hp["max_len"], d, index=hp["position_index"])  # P^K
        self.pos_value = LearnedPositions(hp["max_len"], d, index=hp["position_index"])  # P^V
        self.relation_embedding = RelationEmbedding(time_span, d, dropout)  # E^K_R, E^V_R (+ dropout)
        self.pos_dropout = Dropout(dropout)  # on P^K and P^V (the code)
        init = partial(init_weights, std=hp["init_std"], bias_std=hp["init_bias_std"])
        for module in (self.pos_key, self.pos_value, self.relation_embedding):
            module.apply(init)
        # interval_scale="user": each user's first timestamp and r^u_min (non-persistent: attached
        # from the datamodule at every setup, so checkpoints do not depend on the data)
        self.register_buffer("user_time_origin", None, persistent=False)  # [U] int64 seconds
        self.register_buffer("user_time_unit", None, persistent=False)  # [U] int64 seconds >= 1

    def attach_side_info(self, info: dict[str, Tensor]) -> None:
        super().attach_side_info(info)
        if self.interval_scale != "user":
            return
        if "user_time_origin" not in info or "user_time_unit" not in info:
            raise ValueError("TiSASRec interval_scale='user' needs the datamodule's 'user_time_origin' / "
                             "'user_time_unit' side info (datamodules.base.user_time_scales); "
                             "interval_scale='window' runs without it")
        self.user_time_origin = info["user_time_origin"].long().to(self.device)
        self.user_time_unit = info["user_time_unit"].long().clamp(min=1).to(self.device)

    def user_scales(self, user: Tensor | None) -> tuple[Tensor, Tensor]:
        """``user [B]`` -> (first timestamp ``[B]``, r^u_min ``[B]``), int64 seconds (``"user"``)."""
        if self.user_time_unit is None:
            raise RuntimeError("TiSASRec interval_scale='user': no per-user time scale attached (the datamodule "
                               "passes 'user_time_origin' / 'user_time_unit' through attach_side_info; or set "
                               "model.init_args.interval_scale: window)")
        if user is None:
            raise ValueError("TiSASRec interval_scale='user' needs the batch's 'user' ids")
        user = user.long().to(self.user_time_unit.device)
        if user.numel() and int(user.max()) >= self.user_time_unit.numel():
            raise ValueError(f"user id beyond the {self.user_time_unit.numel()} users of the attached time scales")
        return self.user_time_origin[user], self.user_time_unit[user]

    def relation(self, item_seq: Tensor, time_seq: Tensor, user: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(r^K, r^V)``, each ``[B, L, L, d]``: interval embeddings of the pair (i, j) plus the
        position embedding of key j, broadcast over the query i (Sec. 3.3)."""
        pad_mask = item_seq > 0  # [B, L]
        unit = origin = None
        if self.interval_scale == "user":
            origin, unit = self.user_scales(user)  # [B], [B]
        elif self.interval_rounding == "round":  # the window's oldest real item is its origin
            never = torch.iinfo(time_seq.dtype).max
            origin = time_seq.masked_fill(~pad_mask, never).amin(1)  # [B]
            origin = torch.where(origin == never, torch.zeros_like(origin), origin)  # an all-pad row
        if self.interval_rounding == "floor":
            origin = None
        rel_k, rel_v = self.relation_embedding(time_seq, pad_mask, unit, origin)  # [B, L, L, d] each
        pos_k = self.pos_dropout(self.pos_key(item_seq))  # [B, L, d] P^K_j
        pos_v = self.pos_dropout(self.pos_value(item_seq))  # [B, L, d] P^V_j
        return rel_k + pos_k[:, None], rel_v + pos_v[:, None]  # [B, L, L, d] each

    def encode(self, item_seq: Tensor, time_seq: Tensor, user: Tensor | None = None,
               last_only: bool = False) -> Tensor:
        """item_seq, time_seq ``[B, L]`` (user ``[B]``) -> hidden states ``[B, L, d]`` (``last_only``: ``[B, d]``)."""
        h = self.emb_dropout(self.emb_norm(self.item_emb(item_seq)))  # [B, L, d]
        return self.encoder(h, item_seq > 0, last_only=last_only, relation=self.relation(item_seq, time_seq, user))

    def sequence_states(self, batch: dict[str, Tensor], last_only: bool = False) -> Tensor:
        return self.encode(batch["item_seq"], batch["time_seq"], batch.get("user"), last_only=last_only)
