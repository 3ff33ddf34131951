"""HPCL4SR (Zhu et al., World Wide Web 2024): high-level preferences as positive examples in
contrastive learning for multi-interest sequential recommendation.

High-level preference interests Q_u (Sec. 4.1), from the global category graph
(:mod:`zoo.modules.category_graph`, built once from the training users' adjacent categories):

    A = diffusion(normalise(A_1))                       # Eqs. 1-2, [C+1, C+1]
    H_hat = mean_l H^(l),  H^(l) = W^(l)(A H^(l-1)) + H^(l-1)   # Eqs. 3-4, [C+1, d]
    H_g = H_hat[c_1..c_N] * mask                        # Eq. 5, [B, N, d]
    Q_u = W_q H_g,  W_q in R^{K x N}                     # Eq. 6, [B, K, d] (slot n = n-th oldest)

Low-level preference interests P_u (Sec. 4.2):

    X_i = E[x_i] * mask_i + P[i]                        # Eq. 7 (positions from the oldest item)
    alpha_ij = softmax_j(X_i X_j^T)  (pad keys masked, no 1/sqrt(d), as printed)   # Eq. 8
    X'_i = W(X_i + sum_j alpha_ij X_j) * mask_i         # Eq. 9
    P_u = CapsNet(X')                                   # Eq. 10, ComiRec-DR routing, [B, K, d]
    L_class = CE(W_c X'_i + b_c, c_i) over real items   # Eqs. 11-12 (Z = X', the capsule input)

Fusion, contrast and training (Secs. 4.3-4.4):

    M_u = W_f cat[Q_u, P_u]                             # Eq. 13, Linear(2d, d)
    L_mulCL: anchors {M_u^k, P_u^k}; positive = the same k in the other view (with the
             additive angular margin cos(theta + m)); negatives = the other 2K-2 vectors of the
             same user (Eqs. 15-16; tau = 0.05, m = 10 degrees)
    m_u = M_u[argmax_k <M_u^k, y>];  L_rec = sampled softmax (Eqs. 18-19)
    L = L_rec + lambda_1 L_class + lambda_2 L_mulCL     # Eq. 20 (0.1, 1)
    inference: score(j) = max_k <M_u^k, e_j>

Ablation switches (Table 3):
* ``fusion``: ``"mlp"`` (Eq. 13), ``"add"`` (M = Q + P, "w '+'"), ``"mul"`` (M = Q * P,
  "w '*'"), ``"none"`` (M = P, no graph: the "base" rows).
* ``lambda_class``: 0 = no category classifier ("base" vs "base (w L_class)").
* ``contrastive``: ``"arc"`` (L_mulCL), ``"capsule_reg"`` ("w CR": MIRACLE's capsule
  orthogonality InfoNCE on each user's normalised M_u, tau = ``cr_tau`` 0.1, weight lambda_2),
  ``"none"``.  ``margin_deg=0``: "w/o m" (plain InfoNCE on cosine / tau).
* ``high_level_pool``: ``"position_linear"`` (Eq. 6 as printed) or ``"self_attentive"``.
* ``routing_softmax``: ``"interest"`` (Sabour / ComiRec-TF) or ``"position"`` (PyTorch ports).
* ``graph_readout``: ``"mean"`` (Eq. 4) or ``"last"`` (MDMI).

Paper-form switches (spec section 8, A2/A3/A7; the defaults are the spec's recommendations):
* ``cl_denominator``: ``"eq15"`` (the margined positive in the denominator, ArcFace/ArcCSE) or
  ``"eq17"`` (``sum_{j != i}`` of the un-margined similarities, as Eq. 17 prints it).
* ``cl_reduction``: ``"mean"`` over the 2K anchors and the batch, or ``"sum"`` over the 2K
  anchors (Eq. 17's ``sum_i``) and mean over the batch.
* ``class_loss``: ``"ce"`` (multi-class CE over the categories, pads and uncategorised items
  ignored), ``"bce"`` (Eqs. 11-12 as printed: softmax over the categories, then binary CE
  against the one-hot category, summed over categories, mean over items) or ``"ce_pads"``
  (MDMI: CE over C+1 classes where pads count as class 0).
* ``class_grad_reverse``: reverse the classifier's gradient into X' (MDMI); off by default.

Choices where the paper is silent (no official code exists; spec section 8): m is in degrees;
Eq. 15's denominator (margined positive + 2K-2 negatives), mean over anchors and batch; the
capsule network is ComiRec-DR (per-position bilinear, 3 iterations, zero initial logits,
stop-gradient in the first r-1 iterations, N(0, 1) map init as ComiRec's code, where the spec
suggests kaiming-normal: a small init makes the squashed capsules vanish); graph diffusion hops 4, alpha
0.2, 3 GCN layers (MDMI); the classifier is a multi-class CE over the C+1 category ids that
ignores pads and uncategorised items (id 0), with a normal (not reversed) gradient; the item
table is tied between input and output; kaiming-normal init of the item, position and category
embeddings, xavier-uniform for Eq. 6's ``W_q``, PyTorch defaults for the other Linear layers.
Items without a category (possible on Amazon data) carry id 0: their high-level interest reads
row 0 of the category table, a trainable row outside the graph, and the classifier skips them.
The angular margin is ``cos(min(theta + m, pi))`` (capped, as ArcFace).  The paper's NDCG is
ComiRec's (ideal DCG over the hits), logged as ``ndcg_comirec@K`` and compared with the paper's
tables; ``ndcg@K`` is the standard multi-target NDCG.  The data filter: the paper-data recipes
use ``data.k_core_mode: single_pass``, ComiRec's one round (its Table 1 has 10.38 interactions per
item, below 12); the embedded default keeps the iterative 12-core of its committed table.  The
training budget: the paper-data recipes train as the sibling codes (ComiRec/REMI/MDMI) do, by
steps, validating every 1000 steps (500 on Tmall-Buy) with patience 50 checks and at most 10^6
steps (``val_check_interval``, ``check_val_every_n_epoch: null``, ``max_steps``); the embedded
default keeps a CPU-sized budget (an epoch per check, patience 5, 30 epochs).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.models.comirec import Interests, MultiInterestRecommender
from zoo.modules.category_graph import CategoryGraphEncoder, build_propagation
from zoo.modules.embeddings import LearnedPositions
from zoo.modules.losses import grad_reverse, info_nce
from zoo.modules.multi_interest import CapsuleInterestExtractor, SelfAttentivePooling
from zoo.modules.padding import oldest_first
from zoo.modules.transformer import NEG_INF

# the paper, read by `zoo models` from the source (zoo/catalog.py) without importing this file
PAPER = {"title": "High-level preferences as positive examples in contrastive learning for multi-interest sequential recommendation", "authors": "Zhu et al.", "venue": "World Wide Web 2024"}

FUSIONS = ("mlp", "add", "mul", "none")
CONTRASTIVE = ("arc", "capsule_reg", "none")
CLASS_LOSSES = ("ce", "bce", "ce_pads")


class HPCL4SR(MultiInterestRecommender):
    """HPCL4SR (see the module docstring).

    Args:
        d: embedding size (64).  K: interests (4).  max_len: N, longest history (30 / 20).
        num_categories: C (default: ``data_info["num_categories"]``).
        graph_layers / graph_hops / graph_alpha / graph_readout: category graph (Eqs. 2-4).
        high_level_pool: Eq. 6 form.  routing_iters / routing_softmax: capsule network.
        fusion / contrastive / margin_deg / tau / cr_tau / lambda_class / lambda_cl: see above.
        cl_denominator / cl_reduction / class_loss / class_grad_reverse: paper-form switches
            (A2/A3/A7, see above).
        loss / n_neg / neg_sampler / logq_correction: L_rec (sampled softmax, 1280 shared
            uniform negatives by default).
        **kwargs: :class:`SequentialRecommender` options.
    """

    def __init__(
        self,
        d: int = 64,
        K: int = 4,
        max_len: int = 30,
        num_categories: int | None = None,
        graph_layers: int = 3,
        graph_hops: int = 4,
        graph_alpha: float = 0.2,
        graph_readout: str = "mean",
        high_level_pool: str = "position_linear",
        routing_iters: int = 3,
        routing_softmax: str = "interest",
        fusion: str = "mlp",
        contrastive: str = "arc",
        margin_deg: float = 10.0,
        tau: float = 0.05,
        cr_tau: float = 0.1,
        lambda_class: float = 0.1,
        lambda_cl: float = 1.0,
        cl_denominator: str = "eq15",
        cl_reduction: str = "mean",
        class_loss: str = "ce",
        class_grad_reverse: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if contrastive not in CONTRASTIVE:
            raise ValueError(f"contrastive must be one of {CONTRASTIVE}, got {contrastive!r}")
        if cl_denominator not in ("eq15", "eq17"):
            raise ValueError(f"cl_denominator must be 'eq15' or 'eq17', got {cl_denominator!r}")
        if cl_reduction not in ("mean", "sum"):
            raise ValueError(f"cl_reduction must be 'mean' or 'sum', got {cl_reduction!r}")
        if class_loss not in CLASS_LOSSES:
            raise ValueError(f"class_loss must be one of {CLASS_LOSSES}, got {class_loss!r}")
        if high_level_pool not in ("position_linear", "self_attentive"):
            raise ValueError(f"high_level_pool must be 'position_linear' or 'self_attentive', got {high_level_pool!r}")
        C = num_categories if num_categories is not None else self.data_info.get("num_categories")
        self.uses_categories = fusion != "none" or lambda_class > 0
        if self.uses_categories and not C:
            raise ValueError(
                "HPCL4SR needs item categories: set model.num_categories or use a dataset with categories "
                "(data_info['num_categories'] is missing or 0); fusion='none' with lambda_class=0 runs without them"
            )
        self.K, self.graph_hops, self.graph_alpha = K, graph_hops, graph_alpha
        self.fusion, self.contrastive, self.high_level_pool = fusion, contrastive, high_level_pool
        self.margin_deg, self.tau, self.cr_tau = margin_deg, tau, cr_tau
        self.lambda_class, self.lambda_cl = lambda_class, lambda_cl
        self.cl_denominator, self.cl_reduction = cl_denominator, cl_reduction
        self.class_loss_form, self.class_grad_reverse = class_loss, class_grad_reverse
        # low-level preference (Eqs. 7-10)
        self.item_emb = nn.Embedding(self.num_items + 1, d, padding_idx=0)
        self.pos_emb = LearnedPositions(max_len, d, index="oldest")
        self.context = nn.Linear(d, d, bias=False)  # W of Eq. 9
        self.capsules = CapsuleInterestExtractor(
            d, K, max_len, bilinear="per_position", iters=routing_iters, softmax_over=routing_softmax
        )
        for emb in (self.item_emb.weight, self.pos_emb.embedding.weight):
            nn.init.kaiming_normal_(emb)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        # category supervision (Eqs. 11-12)
        self.classifier = nn.Linear(d, C + 1) if lambda_class > 0 else None
        # high-level preference (Eqs. 1-6) and fusion (Eq. 13)
        if fusion != "none":
            self.graph = CategoryGraphEncoder(C, d, graph_layers, graph_readout)
            if high_level_pool == "position_linear":
                self.W_q = nn.Parameter(torch.empty(K, max_len))  # Eq. 6
                nn.init.xavier_uniform_(self.W_q)
            else:
                self.high_pool = SelfAttentivePooling(d, 4 * d, K)
            self.fuse = nn.Linear(2 * d, d) if fusion == "mlp" else None
        self.register_buffer("item_category", None, persistent=False)  # [N+1]

    # ------------------------------------------------------------------ side info
    def attach_side_info(self, info: dict[str, Tensor]) -> None:
        super().attach_side_info(info)
        if not self.uses_categories:
            return
        for key in ("category", "category_transitions") if self.fusion != "none" else ("category",):
            if key not in info:
                raise ValueError(f"HPCL4SR needs the datamodule's '{key}' side info (a dataset with item categories)")
        cat = info["category"]
        if cat.shape[0] != self.num_items + 1:
            raise ValueError(f"side info 'category' has {cat.shape[0]} rows, expected num_items + 1 = {self.num_items + 1}")
        self.item_category = cat.long().to(self.item_emb.weight.device)
        if self.fusion != "none":
            self.graph.set_graph(build_propagation(info["category_transitions"].float(), self.graph_hops, self.graph_alpha))

    def categories(self, item_seq: Tensor) -> Tensor:
        """Category ids of a (left-padded) item sequence ``[B, L]`` (0 at pads)."""
        if self.item_category is None:
            raise RuntimeError("HPCL4SR: item categories are not attached (call attach_side_info with 'category')")
        return self.item_category[item_seq]

    # ------------------------------------------------------------------ forward
    def high_level(self, item_seq: Tensor, pad_mask: Tensor) -> Tensor:
        """Q_u ``[B, K, d]`` (Eqs. 5-6)."""
        h_hat = self.graph()  # [C+1, d]
        h_g = h_hat[self.categories(item_seq)] * pad_mask[..., None]  # [B, L, d]  Eq. 5
        if self.high_level_pool == "self_attentive":
            return self.high_pool(h_g, pad_mask)  # [B, K, d]
        L = item_seq.shape[1]
        if L > self.W_q.shape[1]:
            raise ValueError(f"sequence length {L} exceeds HPCL4SR max_len={self.W_q.shape[1]}")
        return torch.einsum("kn,bnd->bkd", self.W_q[:, :L], oldest_first(h_g, pad_mask))  # [B, K, d]

    def low_level(self, item_seq: Tensor, pad_mask: Tensor) -> tuple[Tensor, Tensor]:
        """(P_u ``[B, K, d]``, capsule input X' ``[B, L, d]``) (Eqs. 7-10)."""
        x = self.item_emb(item_seq) * pad_mask[..., None] + self.pos_emb(item_seq)  # [B, L, d]  Eq. 7
        logits = (x @ x.transpose(1, 2)).masked_fill(~pad_mask[:, None, :], NEG_INF)  # [B, L, L]
        ctx = torch.softmax(logits, dim=-1) @ x  # [B, L, d]  Eq. 8
        x_ctx = self.context(x + ctx) * pad_mask[..., None]  # [B, L, d]  Eq. 9
        return self.capsules(x_ctx, pad_mask), x_ctx  # Eq. 10

    def fuse_interests(self, Q: Tensor | None, P: Tensor) -> Tensor:
        """M_u ``[B, K, d]`` (Eq. 13 and its Table 3 alternatives)."""
        if self.fusion == "none":
            return P
        assert Q is not None
        if self.fusion == "add":
            return Q + P
        if self.fusion == "mul":
            return Q * P
        return self.fuse(torch.cat([Q, P], dim=-1))

    def forward_interests(self, item_seq: Tensor) -> dict[str, Tensor]:
        """Every intermediate: ``Q`` (if fused), ``P``, ``M`` ``[B, K, d]``; ``X_ctx`` ``[B, L, d]``."""
        pad_mask = item_seq > 0
        P, x_ctx = self.low_level(item_seq, pad_mask)
        Q = self.high_level(item_seq, pad_mask) if self.fusion != "none" else None
        out = {"P": P, "M": self.fuse_interests(Q, P), "X_ctx": x_ctx}
        if Q is not None:
            out["Q"] = Q
        return out

    def interests(self, batch: dict[str, Tensor]) -> Interests:
        return self.forward_interests(batch["item_seq"])["M"], None  # inference uses M_u only

    # ------------------------------------------------------------------ losses
    def class_logits(self, x_ctx: Tensor) -> Tensor:
        """Eq. 11 before the softmax: ``[B, L, C+1]``."""
        assert self.classifier is not None
        return self.classifier(x_ctx)

    def class_loss(self, x_ctx: Tensor, item_seq: Tensor) -> Tensor:
        """Eq. 12 in the ``class_loss`` form: by default multi-class CE over the real, categorised
        history items (0 when there are none)."""
        if self.class_grad_reverse:
            x_ctx = grad_reverse(x_ctx)
        logits, labels = self.class_logits(x_ctx).flatten(0, 1), self.categories(item_seq).flatten()  # [B*L, C+1], [B*L]
        if self.class_loss_form == "ce_pads":  # MDMI: pads are class 0 and count
            return F.cross_entropy(logits, labels)
        keep = labels > 0  # [B*L] real, categorised items
        if not keep.any():
            return logits.sum() * 0.0
        if self.class_loss_form == "ce":
            return F.cross_entropy(logits, labels, ignore_index=0)
        # "bce": Z_hat = softmax over the C categories (Eq. 11), binary CE vs the one-hot (Eq. 12)
        log_z = torch.log_softmax(logits[keep, 1:], -1)  # [M, C]
        log_not_z = torch.log1p(-log_z.exp().clamp(max=1 - 1e-6))  # log(1 - z_hat)  [M, C]
        one_hot = F.one_hot(labels[keep] - 1, log_z.shape[-1]).to(log_z.dtype)  # [M, C]
        return -(one_hot * log_z + (1 - one_hot) * log_not_z).sum(-1).mean()

    def contrastive_loss(self, M: Tensor, P: Tensor) -> Tensor:
        """L_mulCL (Eqs. 15-17) or the capsule-regularisation ablation."""
        if self.contrastive == "capsule_reg":
            return info_nce(M, M, self.cr_tau)  # each interest vs the user's other K-1
        K = M.shape[1]
        anchors = torch.cat([M, P], dim=1)  # [B, 2K, d]
        positives = torch.cat([P, M], dim=1)  # [B, 2K, d]  row i's positive
        # column (i + K) mod 2K of `positives` is anchor i itself: neither positive nor negative
        itself = torch.eye(2 * K, dtype=torch.bool, device=M.device).roll(K, dims=1)  # [2K, 2K]
        loss = info_nce(
            anchors,
            positives,
            self.tau,
            exclude=itself.expand(M.shape[0], -1, -1),
            margin_deg=self.margin_deg,
            margin_in_denominator=self.cl_denominator == "eq15",
        )  # mean over the 2K anchors and the batch
        return loss * (2 * K) if self.cl_reduction == "sum" else loss

    def training_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        item_seq = batch["item_seq"]
        out = self.forward_interests(item_seq)
        terms = {"rec": self.readout_loss(out["M"], None, batch)}  # Eqs. 18-19
        if self.lambda_class > 0:
            terms["class"] = self.lambda_class * self.class_loss(out["X_ctx"], item_seq)
        if self.contrastive != "none" and self.lambda_cl > 0:
            terms["cl"] = self.lambda_cl * self.contrastive_loss(out["M"], out["P"])
        return terms
