"""HM4SR (Zhang, Chen, Shen, Wang, Xiong; WWW 2025): Hierarchical time-aware Mixture of
experts for Multi-modal Sequential Recommendation.

Three SASRec-style causal Transformers (ID, text, image) run side by side.  Their inputs pass
through two mixtures of experts: the Interactive MoE mixes all modalities of an item (one gate
per modality), the Temporal MoE rescales them with experts chosen by explicit time embeddings.
The score of an item is the sum of one dot product per modality.  Shapes: B sequences of
length L (left-padded, most recent item at L-1), hidden size d, M active modalities.

    x_id = E_id[v];  x_m = W_m f_m[v] + b_m  (m = txt, img; f frozen)     Eqs. 2-5   [B, L, d]
    e_m  = x_m + p                          (one position table)           Eq. 6
    e'_m = e_m + α_m Σ_i g^m_i (W^inter_{i,m} [e_id; e_txt; e_img] + b)    Eqs. 7-8, 10
         g^m = softmax(W_{1,m} e_m + b_{1,m})                              Eq. 9      [B, L, k1]
    a_j  = t_j - t_{j-1} (a_1 = 0);  r1 = M_t[floor(μ log2(a + 1))]        Eqs. 11-12 [B, L, d]
    r2_k = cos((l_k t + z_k) · freq^(-k/d))                                 Eq. 13     [B, L, d]
    g'   = softmax(W_2 [r1; r2] + b_2)                                      Eq. 14     [B, L, k2]
    x_temp = Σ_i g'_i (w_i ⊙ [e'_id; e'_txt; e'_img])                       Eqs. 15-16 [B, L, Md]
    H^m  = Transformer_m(Dropout(LayerNorm_m(x^temp_m)))[last position]     Eqs. 17-18 [B, d]
    ŷ_v  = Σ_m <H^m, x_m(v)>                (initial item representations)  Eq. 19     [B, N+1]

Loss (Eq. 27): ``L_main + λ1 L_CP + λ2 L_IDCL + λ3 L_PCL``, logged as ``rec``, ``cp``, ``idcl``,
``pcl`` (each already weighted):

* ``L_main`` (Eq. 20): softmax cross-entropy over all items.
* ``L_CP`` (Eqs. 21-22): multi-label BCE of ``W_CP [x_id; x_txt; x_img] + b_CP`` against the
  category multi-hot of every input item (mean over real positions × categories, as the code).
* ``L_IDCL`` (Eq. 23): in-batch InfoNCE between ``H^id`` and the target's ID embedding, cosine
  similarity, temperature τ = 0.2.
* ``L_PCL`` (Eqs. 24-26): ``floor(β n)`` random real positions of ``x^temp_m`` (m = txt, img) are
  replaced by a time placeholder ``W_{P,m} [r1; r2] + b_{P,m}``; InfoNCE (temperature 1) between
  ``H^m`` and the augmented sequence's state, averaged over the modalities.

Ablation switches (paper Fig. 3 and Fig. 5), one init arg each:

* ``use_interactive_moe=False``: −IMoE, ``e'_m = e_m``.
* ``use_temporal_moe=False``: −TMoE, ``x^temp = e'``; PCL is removed with it, as in the paper.
* ``use_cp`` / ``use_idcl`` / ``use_pcl=False``: −CP / −IDCL / −PCL.
* ``use_text`` / ``use_image=False``: −Text / −Image (the branch, its projection, encoder,
  placeholder and its share of the MoEs are not built).
* ``time_embeddings`` (Fig. 5): ``"interval+absolute"`` (the model), ``"interval"`` (Interval
  Only), ``"absolute"`` (Absolute Only), ``"day"`` (Day), ``"day_of_year"`` (Day of Year) or
  ``"cos"`` (Cos); see :class:`ExplicitTimeEmbeddings`.  ``W_2`` and ``W_{P,m}`` keep one weight
  block per time embedding (``W [r1; r2] = W_1 r1 + W_2 r2``, the same map), so a variant simply
  drops or swaps a block.  The paper describes the last three in one sentence each and the code
  has none of them: their details (UTC days, the day index's origin at the data's first
  interaction, Cos over the interval in seconds with TGAT's initialisation) are our reading.

Missing modalities: a branch is off when its switch is off, when its feature dimension is
unknown/zero (``text_dim`` / ``image_dim`` init args, else ``data_info``), or when
``attach_side_info`` has no ``"text"`` / ``"image"`` table (then the model is rebuilt before
training starts and ``hparams.use_text/use_image`` is set to False, so checkpoints rebuild the
same architecture).  CP is off likewise without ``"category_multi_hot"``; PCL is off when
neither text nor image is on.  Every branch that is off is logged once (rank zero).

Paper vs official code (``SStarCCat/HM4SR`` f1c0a15; spec ``hm4sr.md`` §8).  The default is what
produced the paper's tables, the authors' code, except clear bugs (DESIGN.md "Decisions"); the
other form is a switch:

| switch | paper form | code form | default | why |
|---|---|---|---|---|
| ``temporal_experts_trainable`` | ``True``: the experts ``w_i`` are parameters (Eqs. 15-16) | ``False``: kept in a Python list, never registered, never trained (nor saved) | ``True`` (paper) | clear bug (§8.1).  ``False`` keeps them as a fixed buffer with the same N(0, 0.1) init, saved in checkpoints (unlike the code) so a reloaded model scores the same |
| ``abs_time_unit`` | silent (Eq. 13 prints ``t``) | ``1``: raw Unix seconds, so r2 acts as a hash of the date (cos arguments of 1e3-1e7 rad) | ``1.0`` (code) | produced the tables (§8.2); ``86400`` measures t in days (the Transformer position encoding applied to time) |
| ``mask_pad_logit`` | ``True``: Eq. 20's softmax runs over the items | ``False``: the pad column stays in the training softmax (RecBole CE) | ``False`` (code) | produced the tables (§8.15; measured negligible) |
| ``false_negatives`` | ``"keep"``: every other row is a negative (Eqs. 23, 25) | ``"zero_logit"``: other rows with the same target get logit 0 (from UniSRec) | ``"zero_logit"`` (code) | produced the tables (§8.9); ``"exclude"`` removes them from the denominator (the intent of that masking) |
| ``position_index`` | silent (Eq. 6, one position table) | ``"oldest"``: RecBole right-pads, position 0 = the oldest item of the window | ``"oldest"`` (code) | re-indexes the zoo's left-padded batches the same way; ``"slot"`` = the slot index |
| (no switch) Eq. 13 form | ``cos(l t / freq^{d/4} + z)`` | ``cos((l t + z) freq^{-k/d})``, k = 0..d-1 | code | the printed exponent is taken to be mangled (§8.3): read literally, ``freq^{d/4} = 10^64`` at d = 64, so r2 = cos(z) would not depend on t at all |
| ``cp_reduction`` | ``"sum"``: the BCE summed over a sequence's items and categories (Eq. 22), averaged over the batch | ``"mean"``: mean over real positions x categories | ``"mean"`` (code) | λ1 = 1 was tuned with the mean (§8.8); the sum weighs CP by the batch's (real positions x C) / B, which varies from batch to batch |
| (no switch) gap at the first pad | silent | the negative gap after a right-padded sequence gives NaN (``log2``), cast to an invalid index | gaps clamped to >= 0, bucket 0 at pads | clear bug, and no output depends on it (pad keys are masked, the state is read at the last real item).  Indices are clamped to the table, whose size is ``floor(μ log2(max_gap + 1)) + 1`` as in the code |

Where the paper is silent, the code's: λ2 = 1 (hard-coded there; ``idcl_weight``), PCL temperature
1, β = 0.3, ``floor(β n)`` placeholder positions among all real positions (the last included),
and the initialisation (spec §1.8): N(0, 0.02) for embeddings, projections, Transformers,
LayerNorms (1, 0), the temporal gate and time encoders; PyTorch defaults for the Interactive
MoE, CP head and placeholders; N(0, 0.1) for the temporal experts; α = (0, 1, 1) for (ID, text,
image), so the ID stream starts without cross-modal input.  The first real item has
``a_1 = 0`` (Eq. 11 and the code's ``interval_first``; with a window truncated to ``max_len``
that is the window's first item in both).

Evaluation (the zoo's, shared by every model): full ranking over all items, the user's earlier
items not masked (``mask_history=False``, RecBole's and the code's default here); a target's rank
counts tied items against it (``zoo/metrics.py``), where RecBole's ``topk`` breaks ties
arbitrarily: no difference with continuous scores.  Item features: the text and image tables are
whatever ``data.text_encoder`` / ``data.image_encoder`` produce (the code used BERT ``[CLS]``
without truncation and CLIP ViT-B/16 with mean = std = 0.5; see the Amazon recipes' comments).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from zoo.models.base import SequentialRecommender
from zoo.modules.dropout import Dropout
from zoo.modules.embeddings import LearnedPositions
from zoo.modules.distributed import gather_rows, share_of_mean
from zoo.modules.losses import info_nce
from zoo.modules.scoring import dot_scores
from zoo.modules.temporal import DAY_SECONDS, day_of_year, log_buckets, previous_gaps
from zoo.modules.transformer import TransformerEncoder, init_weights

# the paper, read by `zoo models` from the source (zoo/catalog.py) without importing this file
PAPER = {"title": "Hierarchical Time-Aware Mixture of Experts for Multi-Modal Sequential Recommendation", "authors": "Zhang et al.", "venue": "WWW 2025"}

MODALITIES: tuple[str, ...] = ("id", "txt", "img")
FEATURE_KEYS: dict[str, str] = {"txt": "text", "img": "image"}  # modality -> attach_side_info key
SWITCHES: dict[str, str] = {"txt": "use_text", "img": "use_image"}
TIME_EMBEDDINGS: dict[str, tuple[str, ...]] = {
    "interval+absolute": ("interval", "absolute"),
    "interval": ("interval",),
    "absolute": ("absolute",),
    # Fig. 5's other variants (paper only; no code): each replaces r1/r2 as the gate's input
    "day": ("day",),
    "day_of_year": ("day_of_year",),
    "cos": ("cos",),
}
FALSE_NEGATIVES = ("exclude", "zero_logit", "keep")
MAX_GAP_FALLBACK = 2**31 - 1  # seconds (68 years): table size when the data gives no max gap


def interval_table_size(max_gap_seconds: float, mu: float) -> int:
    """Rows of the interval table M_t: ``floor(μ log2(max_gap + 1)) + 1`` (official code)."""
    return int(math.floor(mu * math.log2(max_gap_seconds + 1.0))) + 1


def placeholder_positions(pad_mask: Tensor, ratio: float) -> Tensor:
    """PCL's "[TP]" positions: exactly ``floor(β n)`` distinct real positions per sequence.

    pad_mask ``[B, L]`` (True = real item) -> ``[B, L]`` bool.  Uniform without replacement
    among the real positions (the last one included), vectorised: random keys, pads last, and
    the ``floor(β n)`` smallest keys win.
    """
    n = pad_mask.sum(1)  # [B]
    k = torch.floor(n.to(torch.float64) * ratio + 1e-9).long()  # [B]  (1e-9: 0.3 * 10 is 3)
    keys = torch.rand(pad_mask.shape, device=pad_mask.device).masked_fill(~pad_mask, 2.0)  # [B, L]
    rank = keys.argsort(1).argsort(1)  # [B, L]  rank of each position's key
    return rank < k[:, None]


class TimeLinear(nn.Module):
    """``W [r1; r2] + b`` over the explicit time embeddings (Eq. 14's gate, Eq. 24's placeholder).

    ``W`` is stored as one ``[out, d]`` block per time embedding (``W [r1; r2] = W_1 r1 + W_2 r2``),
    so the Interval-Only / Absolute-Only variants drop a block and keep the other's weights.
    ``init="normal"``: N(0, 0.02), bias 0 (the code's temporal gate); ``"default"``: PyTorch's
    ``nn.Linear(2d, out)`` init (the code's placeholders), fan-in counted over both embeddings.
    """

    def __init__(self, d: int, out: int, embeddings: Sequence[str], init: str) -> None:
        super().__init__()
        self.blocks = nn.ModuleDict({name: nn.Linear(d, out, bias=False) for name in embeddings})
        self.bias = nn.Parameter(torch.zeros(out))
        bound = 1.0 / math.sqrt(2 * d)
        for block in self.blocks.values():
            if init == "normal":
                nn.init.normal_(block.weight, std=0.02)
            else:
                nn.init.uniform_(block.weight, -bound, bound)
        if init != "normal":
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, r: dict[str, Tensor]) -> Tensor:
        """r: ``{name: [B, L, d]}`` -> ``[B, L, out]``."""
        out = self.bias
        for name, block in self.blocks.items():
            out = out + block(r[name])
        return out


class ExplicitTimeEmbeddings(nn.Module):
    """Interval embedding r1 (Eqs. 11-12) and absolute-time encoding r2 (Eq. 13), or one of
    Fig. 5's other time embeddings.

    r1: ``a_j = max(t_j - t_{j-1}, 0)`` in seconds (0 for the first real item and at pads),
    bucket ``floor(μ log2(a + 1))`` (clamped to the table), learnable table ``M_t``.
    r2: ``cos((l t + z) ⊙ freq^(-k/d))``, k = 0..d-1, with ``t = time / abs_time_unit`` and
    ``l, z`` a ``Linear(1, d)``.
    Fig. 5 (the paper names them only): ``day``, a learnable embedding of the day index within
    the dataset, ``floor((t - t_first) / 86400)`` (UTC days, clamped to the data's span);
    ``day_of_year``, a learnable ``Embedding(366, d)`` of the UTC day of the year; ``cos``,
    ``cos(w ⊙ a_j + b)`` of the interval ``a_j`` in seconds with learnable ``w, b`` (TGAT's
    functional time encoding; ``w_k = 10^(-9k/(d-1))``, ``b = 0`` at init, a recommendation).
    """

    def __init__(
        self,
        d: int,
        embeddings: Sequence[str],
        num_buckets: int,
        mu: float,
        freq: float,
        abs_time_unit: float,
        time_span: Sequence[int] = (0, 0),
    ) -> None:
        super().__init__()
        self.embeddings = tuple(embeddings)
        self.mu, self.abs_time_unit, self.num_buckets = mu, abs_time_unit, num_buckets
        self.first_time = int(time_span[0])
        self.num_days = int(time_span[1] - time_span[0]) // DAY_SECONDS + 1
        if "day" in self.embeddings:
            self.day = nn.Embedding(self.num_days, d)  # one row per day of the data's span
        if "day_of_year" in self.embeddings:
            self.day_of_year = nn.Embedding(366, d)
        if "cos" in self.embeddings:
            self.cos_w = nn.Parameter(10.0 ** -torch.linspace(0.0, 9.0, d))  # [d]  1/s .. 1e-9/s
            self.cos_b = nn.Parameter(torch.zeros(d))  # [d]
        if "interval" in self.embeddings:
            self.interval = nn.Embedding(num_buckets, d)  # M_t
        if "absolute" in self.embeddings:
            self.absolute = nn.Linear(1, d)  # l, z
            inv_freq = freq ** (-torch.arange(d, dtype=torch.float32) / d)  # [d]
            self.register_buffer("inv_freq", inv_freq, persistent=False)

    def interval_positions(self, time_seq: Tensor, pad_mask: Tensor) -> Tensor:
        """pos_j of Eq. 12: ``[B, L]`` long in ``[0, num_buckets)``; 0 at pads and first items."""
        gaps = previous_gaps(time_seq, pad_mask)  # [B, L] seconds
        return log_buckets(gaps, self.mu).clamp(max=self.num_buckets - 1)

    def forward(self, time_seq: Tensor, pad_mask: Tensor) -> dict[str, Tensor]:
        """time_seq ``[B, L]`` int64 seconds -> ``{name: [B, L, d]}`` for each embedding in use
        (``"interval"``: r1, ``"absolute"``: r2, or a Fig. 5 variant)."""
        r: dict[str, Tensor] = {}
        if "interval" in self.embeddings:
            r["interval"] = self.interval(self.interval_positions(time_seq, pad_mask))
        if "absolute" in self.embeddings:
            t = time_seq.float() / self.abs_time_unit  # [B, L]
            # l t + z written out (= self.absolute(t[..., None])) so that it stays float32 under
            # autocast: a bf16 matmul would round t ~ 2e4 days to multiples of 128
            u = t[..., None] * self.absolute.weight[:, 0] + self.absolute.bias  # [B, L, d]
            r["absolute"] = torch.cos(u * self.inv_freq)
        if "day" in self.embeddings:
            day = torch.div(time_seq - self.first_time, DAY_SECONDS, rounding_mode="floor")  # [B, L]
            r["day"] = self.day(day.clamp(0, self.num_days - 1))
        if "day_of_year" in self.embeddings:
            r["day_of_year"] = self.day_of_year(day_of_year(time_seq))  # [B, L, d]
        if "cos" in self.embeddings:
            a = previous_gaps(time_seq, pad_mask).float()  # [B, L] seconds; elementwise: float32 under autocast
            r["cos"] = torch.cos(a[..., None] * self.cos_w + self.cos_b)  # [B, L, d]
        return r


class InteractiveMoE(nn.Module):
    """Level-1 MoE (Eqs. 7-10): k1 experts over the concatenated modalities, one gate each.

    Expert i is a ``Linear(Md, Md)`` whose m-th output slice is ``W^inter_{i,m} e_inter + b``;
    all k1 experts are one ``Linear(Md, k1·Md)`` (the same parameters and init, one matmul).
    """

    def __init__(self, d: int, modalities: Sequence[str], n_experts: int, alpha_init: Sequence[float]) -> None:
        super().__init__()
        self.modalities, self.n_experts = tuple(modalities), n_experts
        M = len(self.modalities)
        self.experts = nn.Linear(M * d, n_experts * M * d)
        self.gates = nn.ModuleDict({m: nn.Linear(d, n_experts) for m in self.modalities})  # W_{1,m}
        self.alpha = nn.Parameter(torch.tensor([float(a) for a in alpha_init]))  # [M]  α_m

    def forward(self, e: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """e: ``{m: [B, L, d]}`` -> (``{m: e'_m [B, L, d]}``, ``{m: g^m [B, L, k1]}``)."""
        B, L, d = e[self.modalities[0]].shape
        e_inter = torch.cat([e[m] for m in self.modalities], -1)  # [B, L, Md]  Eq. 7
        experts = self.experts(e_inter).view(B, L, self.n_experts, len(self.modalities), d)  # [B, L, k1, M, d]
        out, gates = {}, {}
        for j, m in enumerate(self.modalities):
            g = F.softmax(self.gates[m](e[m]), dim=-1)  # [B, L, k1]  Eq. 9
            # Eq. 8 as a broadcast product summed over the k1 experts: the same values as
            # einsum("blk,blkd->bld"), whose CPU batched matrix-vector products (and their
            # backward) cost about twice as much
            x_inter = self.alpha[j] * (g.unsqueeze(-1) * experts[:, :, :, j]).sum(-2)  # [B, L, d]  Eq. 8
            out[m] = e[m] + x_inter  # Eq. 10
            gates[m] = g
        return out, gates


class TemporalMoE(nn.Module):
    """Level-2 MoE (Eqs. 14-16): time-gated element-wise experts ``w_i ∈ R^{Md}``, no residual.

    ``Σ_i g'_i (w_i ⊙ e_temp) = (Σ_i g'_i w_i) ⊙ e_temp``: a per-position diagonal rescaling.
    ``trainable=False`` keeps ``w_i`` as a fixed buffer (the official code never trains them).
    """

    def __init__(self, d: int, width: int, n_experts: int, embeddings: Sequence[str], trainable: bool) -> None:
        super().__init__()
        self.d = d
        self.gate = TimeLinear(d, n_experts, embeddings, init="normal")  # W_2, b_2
        experts = torch.randn(n_experts, width) * 0.1  # [k2, Md]  N(0, 0.1) as the code
        if trainable:
            self.experts = nn.Parameter(experts)
        else:
            self.register_buffer("experts", experts)

    def forward(self, e: dict[str, Tensor], r: dict[str, Tensor]) -> tuple[dict[str, Tensor], Tensor]:
        """e: ``{m: e'_m [B, L, d]}``, r: time embeddings -> (``{m: x^temp_m [B, L, d]}``, g' ``[B, L, k2]``)."""
        names = list(e)
        e_temp = torch.cat([e[m] for m in names], -1)  # [B, L, Md]  Eq. 15
        g = F.softmax(self.gate(r), dim=-1)  # [B, L, k2]  Eq. 14
        x_temp = (g @ self.experts) * e_temp  # [B, L, Md]  Eq. 16
        return dict(zip(names, x_temp.split(self.d, dim=-1))), g


class HM4SR(SequentialRecommender):
    """HM4SR: ID/text/image Transformers behind an Interactive and a Temporal MoE.

    Args:
        d: hidden size (64 in the paper).  n_layers / n_heads / d_ff: each modality's
            Transformer (2 / 2 / 256).  dropout: embedding and Transformer dropout (0.5, code).
        max_len: longest history (50).
        text_dim / image_dim: frozen feature sizes; ``None`` reads ``data_info``; 0 = absent.
        num_categories: C for CP; ``None`` reads ``data_info["num_categories"]``.
        use_text / use_image: the text / image branches (−Text / −Image).
        n_interactive_experts: k1.  n_temporal_experts: k2.
        alpha_init: initial α for (ID, text, image); the code's (0, 1, 1).
        use_interactive_moe / use_temporal_moe: −IMoE / −TMoE (the latter also drops PCL).
        time_embeddings: ``"interval+absolute"`` | ``"interval"`` | ``"absolute"`` | ``"day"`` |
            ``"day_of_year"`` | ``"cos"`` (Fig. 5).
        time_span: ``[first, last]`` Unix seconds of the data, the ``"day"`` embedding's origin and
            table size; ``None`` reads ``data_info["min_time_seconds"/"max_time_seconds"]``.
        interval_scale: μ of Eq. 12 (100).  num_interval_buckets: rows of M_t; ``None`` derives
            them from ``data_info["max_gap_seconds"]`` (else 68 years).
        freq: Eq. 13's base (10000).  abs_time_unit: seconds per unit of t in Eq. 13 (1 = the
            code's raw seconds, default; 86400 = days).
        temporal_experts_trainable: train the temporal experts (paper, default) or not (the
            code's bug).
        position_index: ``"oldest"`` (RecBole: 0 = oldest item of the window) or ``"slot"``.
        use_cp / cp_weight: CP and λ1.  cp_reduction: ``"mean"`` (code, default) | ``"sum"`` (Eq. 22).
        use_idcl / idcl_weight / idcl_temperature: IDCL, λ2, τ.
        use_pcl / pcl_weight / pcl_temperature / pcl_ratio: PCL, λ3, its temperature, β.
        false_negatives: same-target rows in IDCL/PCL: ``"zero_logit"`` (code, default) |
            ``"exclude"`` | ``"keep"`` (Eqs. 23/25 as printed).
        mask_pad_logit: drop the pad column from L_main's softmax (Eq. 20) or keep it (code,
            default False).
        **kwargs: :class:`SequentialRecommender` options (num_items, data_info, lr, topk, ...).
    """

    pad_invariant = True  # pads are masked keys; positions right-aligned or oldest-first

    def __init__(
        self,
        d: int = 64,
        n_layers: int = 2,
        n_heads: int = 2,
        d_ff: int = 256,
        dropout: float = 0.5,
        max_len: int = 50,
        text_dim: int | None = None,
        image_dim: int | None = None,
        num_categories: int | None = None,
        use_text: bool = True,
        use_image: bool = True,
        n_interactive_experts: int = 4,
        n_temporal_experts: int = 4,
        alpha_init: tuple[float, float, float] = (0.0, 1.0, 1.0),
        use_interactive_moe: bool = True,
        use_temporal_moe: bool = True,
        time_embeddings: str = "interval+absolute",
        interval_scale: float = 100.0,
        num_interval_buckets: int | None = None,
        time_span: tuple[int, int] | None = None,
        freq: float = 10000.0,
        abs_time_unit: float = 1.0,
        temporal_experts_trainable: bool = True,
        position_index: str = "oldest",
        use_cp: bool = True,
        cp_weight: float = 1.0,
        cp_reduction: str = "mean",
        use_idcl: bool = True,
        idcl_weight: float = 1.0,
        idcl_temperature: float = 0.2,
        use_pcl: bool = True,
        pcl_weight: float = 1.0,
        pcl_temperature: float = 1.0,
        pcl_ratio: float = 0.3,
        false_negatives: str = "zero_logit",
        mask_pad_logit: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters()
        if time_embeddings not in TIME_EMBEDDINGS:
            raise ValueError(f"time_embeddings must be one of {sorted(TIME_EMBEDDINGS)}, got {time_embeddings!r}")
        if cp_reduction not in ("mean", "sum"):
            raise ValueError(f"cp_reduction must be 'mean' (code) or 'sum' (Eq. 22), got {cp_reduction!r}")
        if false_negatives not in FALSE_NEGATIVES:
            raise ValueError(f"false_negatives must be one of {FALSE_NEGATIVES}, got {false_negatives!r}")
        if len(alpha_init) != len(MODALITIES):
            raise ValueError(f"alpha_init needs one value per modality {MODALITIES}, got {alpha_init!r}")
        if not 0.0 <= pcl_ratio <= 1.0:
            raise ValueError(f"pcl_ratio (β) must be in [0, 1], got {pcl_ratio}")
        if min(idcl_temperature, pcl_temperature, abs_time_unit, interval_scale) <= 0:
            raise ValueError("idcl_temperature, pcl_temperature, abs_time_unit and interval_scale must be > 0")
        if min(n_interactive_experts, n_temporal_experts) < 1:
            raise ValueError("n_interactive_experts and n_temporal_experts must be >= 1")
        info = self.data_info
        self.feature_dims = {
            "txt": int(text_dim if text_dim is not None else info.get("text_dim") or 0),
            "img": int(image_dim if image_dim is not None else info.get("image_dim") or 0),
        }
        self.num_categories = int(num_categories if num_categories is not None else info.get("num_categories") or 0)
        if num_interval_buckets is None:
            num_interval_buckets = interval_table_size(float(info.get("max_gap_seconds") or MAX_GAP_FALLBACK), interval_scale)
        self.num_interval_buckets = int(num_interval_buckets)
        if time_span is None:
            time_span = (info.get("min_time_seconds"), info.get("max_time_seconds"))
        if time_embeddings == "day" and (None in time_span or time_span[1] < time_span[0]):
            raise ValueError("time_embeddings='day' needs the data's time span: time_span=[first, last] Unix "
                             f"seconds, or data_info min_time_seconds/max_time_seconds (got {time_span!r})")
        self.time_span = (0, 0) if None in time_span else (int(time_span[0]), int(time_span[1]))
        for name in ("text_features", "image_features", "category_multi_hot"):
            self.register_buffer(name, None, persistent=False)
        self._side_info: dict[str, Tensor] = {}
        self._configure()
        self._build()

    # ------------------------------------------------------------------ architecture
    def _configure(self) -> None:
        """Decide the active modalities and auxiliary tasks; log every branch that is off."""
        hp = self.hparams
        off: list[str] = []
        self.modalities: tuple[str, ...] = ("id",)
        for m in ("txt", "img"):
            if not hp[SWITCHES[m]]:
                off.append(f"{FEATURE_KEYS[m]} branch (model.{SWITCHES[m]}: false)")
            elif self.feature_dims[m] <= 0:
                off.append(f"{FEATURE_KEYS[m]} branch (no {FEATURE_KEYS[m]} features: {FEATURE_KEYS[m]}_dim unknown or 0)")
            else:
                self.modalities += (m,)
        self.feature_modalities = tuple(m for m in self.modalities if m != "id")
        self.cp_on = bool(hp.use_cp and self.num_categories > 0)
        if hp.use_cp and not self.cp_on:
            off.append("CP (no item categories)")
        self.pcl_modalities = self.feature_modalities if hp.use_pcl and hp.use_temporal_moe else ()
        if hp.use_pcl and not hp.use_temporal_moe:
            off.append("PCL (removed with the Temporal MoE)")
        elif hp.use_pcl and not self.pcl_modalities:
            off.append("PCL (needs the text or image branch)")
        if off:
            rank_zero_info("[zoo] HM4SR: switched off: " + "; ".join(off))

    def _build(self) -> None:
        """Create every module for the active configuration (called again if side info lacks a modality)."""
        hp = self.hparams
        d, mods = hp.d, self.modalities
        # N(0, 0.02) group (RecBole init in the code)
        self.item_emb = nn.Embedding(self.num_items + 1, d, padding_idx=0)  # E_id
        self.pos_emb = LearnedPositions(hp.max_len, d, index=hp.position_index)  # p, shared
        self.feature_proj = nn.ModuleDict({m: nn.Linear(self.feature_dims[m], d) for m in self.feature_modalities})
        self.norms = nn.ModuleDict({m: nn.LayerNorm(d, eps=1e-12) for m in mods})
        self.encoders = nn.ModuleDict(
            {m: TransformerEncoder(d, hp.n_layers, hp.n_heads, hp.d_ff, hp.dropout, causal=True) for m in mods}
        )
        self.dropout = Dropout(hp.dropout)
        embeddings = TIME_EMBEDDINGS[hp.time_embeddings]
        self.time_embeddings = (
            ExplicitTimeEmbeddings(d, embeddings, self.num_interval_buckets, hp.interval_scale, hp.freq, hp.abs_time_unit,
                                   self.time_span)
            if hp.use_temporal_moe
            else None
        )
        for module in (self.item_emb, self.pos_emb, self.feature_proj, self.norms, self.encoders, self.time_embeddings):
            if module is not None:
                module.apply(init_weights)
        # PyTorch-default group (created after the code's init call), and N(0, 0.1) experts
        alpha = [hp.alpha_init[MODALITIES.index(m)] for m in mods]
        self.interactive_moe = (
            InteractiveMoE(d, mods, hp.n_interactive_experts, alpha) if hp.use_interactive_moe else None
        )
        self.temporal_moe = (
            TemporalMoE(d, len(mods) * d, hp.n_temporal_experts, embeddings, hp.temporal_experts_trainable)
            if hp.use_temporal_moe
            else None
        )
        self.cp_head = nn.Linear(len(mods) * d, self.num_categories) if self.cp_on else None  # W_CP, b_CP
        self.placeholders = nn.ModuleDict(
            {m: TimeLinear(d, d, embeddings, init="default") for m in self.pcl_modalities}
        )  # W_{P,m}, b_{P,m}

    # ------------------------------------------------------------------ side information
    def attach_side_info(self, info: dict[str, Tensor]) -> None:
        """Keep the frozen text/image tables and the category multi-hot (non-persistent buffers).

        A branch whose table is missing is switched off (and the model rebuilt) if training has
        not started; afterwards a missing table is an error.
        """
        self._side_info = dict(info)
        missing = [m for m in self.feature_modalities if FEATURE_KEYS[m] not in info]
        cp_missing = self.cp_on and "category_multi_hot" not in info
        if missing or cp_missing:
            if self.global_step > 0 or self._pretrained_loaded:
                keys = [FEATURE_KEYS[m] for m in missing] + (["category_multi_hot"] if cp_missing else [])
                raise ValueError(f"HM4SR: side info lacks {keys} but the model was trained with them")
            for m in missing:
                rank_zero_info(f"[zoo] HM4SR: the data has no '{FEATURE_KEYS[m]}' features: {FEATURE_KEYS[m]} branch off")
                self.hparams[SWITCHES[m]] = False
            if cp_missing:
                rank_zero_info("[zoo] HM4SR: the data has no 'category_multi_hot': CP off")
                self.hparams["use_cp"] = False
            self._configure()
            self._build()
        device = self.item_emb.weight.device
        for m in self.feature_modalities:
            table = info[FEATURE_KEYS[m]]
            expected = (self.num_items + 1, self.feature_dims[m])
            if tuple(table.shape) != expected:
                raise ValueError(
                    f"HM4SR: side info '{FEATURE_KEYS[m]}' has shape {tuple(table.shape)}, expected {expected} "
                    f"([num_items + 1, {FEATURE_KEYS[m]}_dim], row 0 = padding)"
                )
            setattr(self, f"{FEATURE_KEYS[m]}_features", table.to(device=device, dtype=torch.float32))
        if self.cp_on:
            multi_hot = info["category_multi_hot"]
            expected = (self.num_items + 1, self.num_categories + 1)
            if tuple(multi_hot.shape) != expected:
                raise ValueError(
                    f"HM4SR: side info 'category_multi_hot' has shape {tuple(multi_hot.shape)}, expected {expected} "
                    "([num_items + 1, num_categories + 1], column 0 unused)"
                )
            self.category_multi_hot = multi_hot.to(device=device, dtype=torch.float32)

    def _features(self, m: str) -> Tensor:
        table = getattr(self, f"{FEATURE_KEYS[m]}_features")
        if table is None:
            raise RuntimeError(
                f"HM4SR: the {FEATURE_KEYS[m]} branch is on but no '{FEATURE_KEYS[m]}' table was attached "
                f"(the datamodule passes it through attach_side_info; or set model.init_args.{SWITCHES[m]}: false)"
            )
        return table

    # ------------------------------------------------------------------ forward
    def initial_representations(self, items: Tensor) -> dict[str, Tensor]:
        """x_m of Eqs. 2-5 for item ids ``[...]`` -> ``{m: [..., d]}``."""
        x = {"id": self.item_emb(items)}
        for m in self.feature_modalities:
            x[m] = self.feature_proj[m](self._features(m)[items])
        return x

    def item_table(self) -> Tensor:
        """``[x_id; x_txt; x_img]`` of every item, ``[N+1, Md]`` (the candidate side of Eq. 19)."""
        return torch.cat(
            [self.item_emb.weight] + [self.feature_proj[m](self._features(m)) for m in self.feature_modalities], -1
        )

    def sequence_state(self, m: str, s: Tensor, pad_mask: Tensor) -> Tensor:
        """Eqs. 17-18: ``s [B, L, d]`` -> ``H^m [B, d]`` (state at the most recent item)."""
        return self.encoders[m](self.dropout(self.norms[m](s)), pad_mask, last_only=True)  # [B, d]

    def encode(self, batch: dict[str, Tensor]) -> dict[str, Any]:
        """Every intermediate of the forward pass (spec §1.9), keyed by the paper's names."""
        item_seq = batch["item_seq"]  # [B, L]
        pad_mask = item_seq > 0  # [B, L]
        x = self.initial_representations(item_seq)  # {m: [B, L, d]}  Eqs. 2-5
        p = self.pos_emb(item_seq)  # [B, L, d]
        e = {m: x[m] + p for m in self.modalities}  # Eq. 6
        out: dict[str, Any] = {"pad_mask": pad_mask, "x": x, "e": e}
        if self.interactive_moe is not None:
            e, out["interactive_gates"] = self.interactive_moe(e)  # Eqs. 7-10
        out["e_inter"] = e
        if self.temporal_moe is not None:
            out["r"] = self.time_embeddings(batch["time_seq"], pad_mask)  # Eqs. 11-13
            x_temp, out["temporal_gates"] = self.temporal_moe(e, out["r"])  # Eqs. 14-16
        else:
            x_temp = e
        out["x_temp"] = x_temp
        out["h"] = {m: self.sequence_state(m, x_temp[m], pad_mask) for m in self.modalities}  # {m: [B, d]}
        return out

    def user_representation(self, batch: dict[str, Tensor]) -> Tensor:
        h = self.encode(batch)["h"]
        return torch.cat([h[m] for m in self.modalities], -1)  # [B, Md]

    def score_all(self, user_repr: Tensor) -> Tensor:
        return dot_scores(user_repr, self.item_table())  # [B, N+1]  Eq. 19

    def ranking_factors(self, user_repr: Tensor) -> tuple[Tensor, Tensor]:
        return user_repr, self.item_table()  # score_all = their product: chunked evaluation

    def score_candidates(self, user_repr: Tensor, candidates: Tensor) -> Tensor:
        return torch.einsum("bd,bcd->bc", user_repr, self.item_table()[candidates])  # [B, C]

    # ------------------------------------------------------------------ losses
    def contrastive(self, a: Tensor, b: Tensor, tau: float, target: Tensor) -> Tensor:
        """In-batch InfoNCE (Eqs. 23, 25), cosine similarity, rows with the same target handled
        by ``false_negatives``.  a, b ``[B, d]``; target ``[B]``.  Under DDP the negatives are
        every process's rows (``gather_rows``): N processes of B/N rows train as one of B."""
        b, offset = gather_rows(b)  # [B', d], B' = B in one process
        same = target[:, None] == gather_rows(target)[0][None, :]  # [B, B']
        mode = self.hparams.false_negatives
        if mode == "keep":
            loss = info_nce(a, b, tau, offset=offset)
        else:  # "exclude": no term; "zero_logit": the code's (UniSRec's) logit 0
            excluded = float("-inf") if mode == "exclude" else 0.0
            loss = info_nce(a, b, tau, exclude=same, offset=offset, excluded_logit=excluded)
        return share_of_mean(loss, len(a), b.shape[0])  # uneven shares (the epoch's last batch)

    def category_prediction_loss(self, x: dict[str, Tensor], item_seq: Tensor) -> Tensor:
        """L_CP (Eqs. 21-22): BCE over the categories of every input item; mean over real positions
        and categories (code) or, ``cp_reduction="sum"``, summed per sequence and averaged over the batch."""
        pad_mask = (item_seq > 0).float()  # [B, L]
        logits = self.cp_head(torch.cat([x[m] for m in self.modalities], -1))  # [B, L, C]
        labels = self.category_multi_hot[item_seq][..., 1:]  # [B, L, C]
        bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")  # [B, L, C]
        if self.hparams.cp_reduction == "sum":
            return (bce.sum(-1) * pad_mask).sum() / len(item_seq)
        return (bce.mean(-1) * pad_mask).sum() / pad_mask.sum().clamp(min=1.0)

    def placeholder_contrastive_loss(self, out: dict[str, Any], target: Tensor) -> Tensor:
        """L_PCL (Eqs. 24-26): time placeholders at ``floor(β n)`` positions of x^temp_m, m = txt, img."""
        chosen = placeholder_positions(out["pad_mask"], self.hparams.pcl_ratio)[..., None]  # [B, L, 1]
        losses = []
        for m in self.pcl_modalities:
            placeholder = self.placeholders[m](out["r"])  # [B, L, d]  Eq. 24
            s_aug = torch.where(chosen, placeholder, out["x_temp"][m])  # [B, L, d]
            h_aug = self.sequence_state(m, s_aug, out["pad_mask"])  # [B, d]  H^{m,1}
            losses.append(self.contrastive(out["h"][m], h_aug, self.hparams.pcl_temperature, target))  # Eq. 25
        return torch.stack(losses).mean()  # Eq. 26

    def training_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        hp, target = self.hparams, batch["target"]
        out = self.encode(batch)
        logits = self.score_all(torch.cat([out["h"][m] for m in self.modalities], -1))  # [B, N+1]
        if hp.mask_pad_logit:
            logits[:, 0] = float("-inf")
        terms = {"rec": F.cross_entropy(logits, target)}  # Eq. 20
        if self.cp_on:
            terms["cp"] = hp.cp_weight * self.category_prediction_loss(out["x"], batch["item_seq"])
        if hp.use_idcl:
            terms["idcl"] = hp.idcl_weight * self.contrastive(
                out["h"]["id"], self.item_emb(target), hp.idcl_temperature, target
            )
        if self.pcl_modalities:
            terms["pcl"] = hp.pcl_weight * self.placeholder_contrastive_loss(out, target)
        return terms
