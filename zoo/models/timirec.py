"""TiMiRec (Wang et al., CIKM 2022): target interest distillation for multi-interest recommendation.

Multi-interest extractor F_E (Sec. 3.5.1, ComiRec-SA as in the official TiMiRec.py):

    H = E_ext[s] + P[pos]                        # [B, L, d]  learned positions (recency index)
    H = Transformer(H) * valid                   # TiMiRec+ only (ComiRec+ extractor)
    A = softmax_L(W2 tanh(W1 H))                 # [B, K, L]  Eq. 12 (D_a = 8, with biases)
    V = A H                                      # [B, K, d]  Eq. 13 (pools the pos-added H)

Target-interest predictor G_P (Sec. 3.5.2): s = GRU(E_pred[s]) (Eq. 14), z^q = MLP(s) (Eq. 15).

Two stages (Algorithm 1), chosen by ``stage``:

* ``"pretrain"``: the extractor alone; training reads out the greedy interest
  ``v = V[argmax_k <V_k, i>]`` (Eq. 2) and minimises L_rec (BPR, Eq. 10); inference scores
  ``max_k <V_k, e_i>``.  This stage is ReChorus's ``TiMiRec --stage pretrain``, TiMiRec's ComiRec+
  with ``transformer=True`` (ReChorus's own ``ComiRec.py`` pools the raw item embeddings: the
  zoo's ``ComiRec(pool="raw")``, ``recipes/comirec_rechorus.yaml``, the ComiRec column of the table).
* ``"finetune"``: extractor + predictor; ``v = V softmax(z^q)`` (Eq. 4) in training AND
  inference; the distillation soft label is ``z^p = cos(V_k, i)`` (Eq. 5) and the loss
  ``L = L_rec + T^2 L_distill`` (Eq. 11) with ``L_distill = KL(softmax(sg(z^p)/T) || softmax(z^q/T))``
  (the code's KL, whose gradient equals Eq. 9's cross-entropy), via
  :func:`zoo.modules.losses.distillation_kl`.  The pre-trained extractor (keys ``item_emb.*``,
  ``extractor.*``) is loaded through the base class's ``pretrained_ckpt``; nothing is frozen.
  Without a ``pretrained_ckpt`` this stage is the paper's "joint train" variant (Table 4).

Ablation switches (Tables 3-4):
* ``aggregation``: ``"predicted"`` (TiMiRec), ``"mean"`` (mean pooling: uniform weights, no
  predictor), ``"max"`` (max pooling = ComiRec's greedy inference).
* ``distill``: False = "attn pooling (w/o distill)" (predicted aggregation, L_rec only).
* ``stop_grad``: False = "w/o stopgrad": the soft label p is NOT detached, so the extractor also
  learns from the distillation; ``nostop_form`` picks its loss: ``"kl"`` (default: the code's
  ``KLDivLoss`` with ``.detach()`` removed, KL(p ‖ q), which pulls p towards q) or ``"ce"``
  (Eq. 8 as printed, ``-p^T log q``, which also pushes p towards one-hot: the gradients differ by
  that of p's entropy once p is trained); both scaled by T^2 (Eq. 11).

Paper vs official code (ReChorus ``TiMiRec.py``, maintained by the authors; spec ``timirec.md``
§8).  The default is what produced the paper's tables, the authors' code, except clear bugs
(DESIGN.md "Decisions"); the other form is a switch:

| switch | paper form | code form | default | why |
|---|---|---|---|---|
| ``head_layers`` | 2: the "2-layer projection MLP head" of Eq. 15 | ``--n_layers``: 1 in the Beauty run, 2 in the ML-1M run (``run.sh``); the 2-layer head has Dropout(0.5) before the ReLU | ``2`` (the code's ML-1M run, and the paper) | the MovieLens default follows the code's ML-1M run; the Beauty recipes set 1, the code's Beauty run (B1) |
| ``stop_grad`` | ``True``: stop-gradient on the soft label (Eq. 9) | ``True`` (``.detach()``) | ``True`` (both) | ``False`` is the paper's "w/o stopgrad" ablation |
| ``nostop_form`` | ``"ce"``: Eq. 8's cross-entropy without the stop-gradient | ``"kl"``: the code's KL with ``.detach()`` removed | ``"kl"`` (code) | what the ablation row ran (only with ``stop_grad=False``) |
| (no switch) W1 / W2, D_a | bias-free, D_a not given (Eq. 12) | with biases, D_a = 8 (``d_a``) | code | B5 |
| (no switch) reductions | sums over u, t (Eqs. 9-10) | batch means | code | B7, B8 |
| (no switch) L_distill form | cross-entropy ``-p^T log q`` (Eq. 9) | ``KL(p ‖ q)`` (batchmean) | code | same gradient, only the logged value differs |
| ``position_index`` | "trainable positional embeddings" | counts from the most recent item (1 = newest, pads 0) | ``"slot"`` (the same model as the code's ``"recent"`` on the datamodule's max_len-padded windows) | B3; ``"recent"`` is the code's index at any length |
| ``init_std`` | silent | N(0, 0.01^2) on every Linear and Embedding, GRU defaults | ``0.01`` (code) | ReChorus ``BaseModel.init_weights`` |
| ``init_bias_std`` | silent | Linear biases N(0, 0.01^2) | ``0.01`` (code) | ``0.0`` = zero biases (the zoo before issue 15's rule) |
| ``activation`` | silent | ReLU in the "+" layer (``layers.TransformerLayer``) | ``"relu"`` (code) | ``"gelu"`` = the zoo's shared layer |
| ``attn_projection`` | silent | no output projection after the "+" layer's heads | ``False`` (code) | ``True`` = the zoo's shared layer |
| ``decay_biases`` | silent | no weight decay on biases (``customize_parameters``) | ``False`` (code) | ``True`` decays every parameter |
| ``train_negatives_exclude`` | silent | BPR negative outside the user's whole training history (``train_clicked_set``) | ``"window"`` for the class, so a model built without a datamodule's training history still trains; every TiMiRec recipe sets the code's value | ``history`` (code, in the recipes) |

The "+" Transformer layer is otherwise the zoo's shared post-LN layer with the code's settings (1
head, d_ff = d, no dropout, eps 1e-5).  ``recipes/timirec_rechorus_pretrain.yaml`` and
``recipes/timirec_rechorus.yaml`` set every ReChorus value (docs/compare.md "Peer differences").
"""

from __future__ import annotations

from functools import partial
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.models.comirec import MultiInterestRecommender
from zoo.modules.losses import distillation_kl
from zoo.modules.multi_interest import SelfAttentiveExtractor, TargetInterestPredictor, interest_cosine
from zoo.modules.scoring import best_interest, dot_scores, max_interest_scores
from zoo.modules.transformer import init_weights

# the paper, read by `zoo models` from the source (zoo/catalog.py) without importing this file
PAPER = {"title": "Target Interest Distillation for Multi-Interest Recommendation", "authors": "Wang et al.", "venue": "CIKM 2022"}

UserRepr = tuple[Tensor, Tensor | None]  # (V [B, K, d], aggregation weights [B, K] or None = max)


class TiMiRec(MultiInterestRecommender):
    """TiMiRec / TiMiRec+ (see the module docstring).

    Args:
        stage: ``"pretrain"`` (extractor only, greedy) or ``"finetune"`` (with the predictor).
        d: embedding size (64).  K: interests (Beauty 4, ML-1M 2).  d_a: attention size (8).
        max_len: longest history (20).  transformer: TiMiRec+ (ComiRec+ extractor).
        position_index / init_std / init_bias_std / activation / attn_projection: see the
            paper-vs-code table (the "+" layer's FFN activation and attention output projection;
            the Linear/Embedding weight and bias init std).
        decay_biases: weight decay on biases too; ``False`` = ReChorus's ``customize_parameters``
            (code, default for TiMiRec; the base class defaults to ``True``).
        T: distillation temperature (Beauty 0.1, ML-1M 0.5).
        head_layers / head_dropout: predictor head (Eq. 15): 2 layers (paper; the code's ML-1M
            run) or 1 (the code's Beauty run); dropout before the ReLU of the 2-layer head.
        aggregation / distill / stop_grad: ablations (module docstring).  nostop_form: the loss
            without the stop-gradient, ``"kl"`` (code, default) | ``"ce"`` (Eq. 8).
        loss: L_rec, ``"bpr"`` (paper Eq. 10), ``"sampled_softmax"`` or ``"full_softmax"``.
        n_neg / neg_sampler / logq_correction: sampled-softmax options.
        **kwargs: :class:`SequentialRecommender` options (``pretrained_ckpt`` for the fine-tune).
    """

    # Stage 2's arguments, which ``stage="pretrain"`` never reads (no predictor, greedy max
    # aggregation, L_rec only): `zoo reproduce`/`ablate` give rows that differ only in these one
    # shared stage-1 run (tests/test_timirec.py checks the stage-1 model does not depend on them).
    FINETUNE_ONLY: ClassVar[frozenset[str]] = frozenset(
        {"aggregation", "distill", "stop_grad", "nostop_form", "T", "head_layers", "head_dropout"})

    def __init__(
        self,
        stage: str = "finetune",
        d: int = 64,
        K: int = 4,
        d_a: int = 8,
        max_len: int = 20,
        transformer: bool = False,
        T: float = 0.1,
        head_layers: int = 2,
        head_dropout: float = 0.5,
        aggregation: str = "predicted",
        distill: bool = True,
        stop_grad: bool = True,
        nostop_form: str = "kl",
        loss: str = "bpr",
        position_index: str = "slot",
        activation: str = "relu",
        attn_projection: bool = False,
        init_std: float = 0.01,
        init_bias_std: float = 0.01,
        decay_biases: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(loss=loss, decay_biases=decay_biases, **kwargs)
        self.save_hyperparameters()
        if stage not in ("pretrain", "finetune"):
            raise ValueError(f"stage must be 'pretrain' or 'finetune', got {stage!r}")
        if aggregation not in ("predicted", "mean", "max"):
            raise ValueError(f"aggregation must be 'predicted', 'mean' or 'max', got {aggregation!r}")
        if T <= 0:
            raise ValueError(f"T (distillation temperature) must be > 0, got {T}")
        self.stage, self.T, self.distill, self.stop_grad = stage, T, distill, stop_grad
        if nostop_form not in ("kl", "ce"):
            raise ValueError(f"nostop_form must be 'kl' (code) or 'ce' (Eq. 8), got {nostop_form!r}")
        self.nostop_form = nostop_form
        self.aggregation = "max" if stage == "pretrain" else aggregation
        self.item_emb = nn.Embedding(self.num_items + 1, d)  # E_ext (ReChorus: no padding_idx)
        self.extractor = SelfAttentiveExtractor(
            d, K, d_a, max_len, position_index=position_index, transformer=transformer, pool="input",
            activation=activation, attn_projection=attn_projection,
        )
        self.predictor = (
            TargetInterestPredictor(self.num_items, d, K, head_layers, head_dropout)
            if self.aggregation == "predicted"
            else None
        )
        self.apply(partial(init_weights, std=init_std, bias_std=init_bias_std))

    # ------------------------------------------------------------------ modules
    def interests(self, batch: dict[str, Tensor]) -> tuple[Tensor, None]:
        item_seq = batch["item_seq"]  # [B, L]
        return self.extractor(item_seq, self.item_emb(item_seq)), None  # V [B, K, d]

    def interest_logits(self, item_seq: Tensor) -> Tensor:
        """z^q ``[B, K]`` (Eq. 3); needs ``aggregation="predicted"``."""
        if self.predictor is None:
            raise RuntimeError(f"TiMiRec(stage={self.stage!r}, aggregation={self.aggregation!r}) has no predictor")
        return self.predictor(item_seq)

    def interest_distribution(self, item_seq: Tensor) -> Tensor:
        """softmax(z^q) ``[B, K]``: the predicted target-interest distribution (Eq. 4)."""
        return torch.softmax(self.interest_logits(item_seq), dim=-1)

    def aggregate(self, V: Tensor, w: Tensor) -> Tensor:
        """v = V w: ``[B, K, d]`` x ``[B, K]`` -> ``[B, d]`` (Eq. 4)."""
        return torch.einsum("bkd,bk->bd", V, w)

    # ------------------------------------------------------------------ scoring
    def user_representation(self, batch: dict[str, Tensor]) -> UserRepr:
        V, _ = self.interests(batch)
        if self.aggregation == "max":
            return V, None
        if self.aggregation == "mean":
            return V, V.new_full(V.shape[:2], 1.0 / V.shape[1])
        return V, self.interest_distribution(batch["item_seq"])

    def score_all(self, user_repr: UserRepr) -> Tensor:
        V, w = user_repr
        if w is None:
            return max_interest_scores(V, self.item_emb.weight, None, self.eval_chunk_size)  # [B, N+1]
        return dot_scores(self.aggregate(V, w), self.item_emb.weight)  # [B, N+1]

    def ranking_factors(self, user_repr: UserRepr) -> tuple[Tensor, Tensor] | None:
        V, w = user_repr  # stage 2's aggregated vector is one user vector: chunked evaluation
        return None if w is None else (self.aggregate(V, w), self.item_emb.weight)

    def score_candidates(self, user_repr: UserRepr, candidates: Tensor) -> Tensor:
        V, w = user_repr
        if w is None:
            return super().score_candidates((V, None), candidates)
        return torch.einsum("bd,bcd->bc", self.aggregate(V, w), self.item_emb(candidates))  # [B, C]

    # ------------------------------------------------------------------ training
    def distillation_loss(self, z_q: Tensor, V: Tensor, target_emb: Tensor) -> Tensor:
        """T^2 L_distill (Eqs. 5-9, 11): soft label z^p = cos(V, i), stop-gradient unless ablated."""
        z_p = interest_cosine(V, target_emb)  # [B, K]
        if self.stop_grad or self.nostop_form == "kl":  # Eq. 9 (KL form); "w/o stopgrad": not detached
            return distillation_kl(z_q, z_p, self.T, detach_teacher=self.stop_grad)
        p = F.softmax(z_p / self.T, dim=-1)  # Eq. 8: the soft label keeps its gradient
        return -(p * F.log_softmax(z_q / self.T, dim=-1)).sum(-1).mean() * self.T**2

    def training_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        item_seq, target = batch["item_seq"], batch["target"]
        V, _ = self.interests(batch)  # [B, K, d]
        target_emb = self.item_emb(target)  # [B, d]
        terms: dict[str, Tensor] = {}
        if self.aggregation == "max":
            v = best_interest(V, target_emb)  # Eq. 2
        elif self.aggregation == "mean":
            v = V.mean(1)
        else:
            z_q = self.interest_logits(item_seq)  # [B, K]
            v = self.aggregate(V, torch.softmax(z_q, dim=-1))  # Eq. 4
            if self.distill:
                terms["distill"] = self.distillation_loss(z_q, V, target_emb)
        terms["rec"] = self.rec_loss(v, target, self.item_emb.weight, item_seq, batch.get("user"))
        return terms
