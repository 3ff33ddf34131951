"""ComiRec (Cen et al., KDD 2020): controllable multi-interest recommendation.

Two extractors over the user's history, K interests each, trained with the hard readout (the
interest closest to the target, ComiRec Eq. 8 / TiMiRec Eq. 2) and scored at inference by the
best interest per item (``max_k <v_k, e_i>``, the merge of K Faiss retrievals):

* ComiRec-SA (``extractor="sa"``): ``H = E[s] + P`` (learned positions from the oldest item, as
  the THUDM code), ``A = softmax_L(W2 tanh(W1 H))`` (d_a = 4d), ``V = A E[s]`` — the official code
  pools the RAW item embeddings (``pool="raw"``); ``pool="input"`` pools H.
* ComiRec-DR (``extractor="dr"``): dynamic routing with a per-position bilinear map
  ``u_hat_{k,i} = W_{i,k} e_i`` (N(0, 1) init), zero initial logits, 3 iterations, softmax over
  interests, stop-gradient on the first r-1 iterations, no position embedding.
* ComiRec+ (``transformer=True``; TiMiRec's comparator): one bidirectional Transformer layer
  (1 head, d_ff = d, no dropout) on ``E[s] + P`` before the SA pooling, pooling its outputs.
  ReChorus's layer (TiMiRec's ``add_trm``) has no attention output projection and ReLU:
  ``attn_projection=False, activation="relu"``.

Peer switches for ReChorus's ``src/models/sequential/ComiRec.py`` (``recipes/comirec_rechorus.yaml``;
docs/compare.md "Peer differences"): ``loss="bpr"`` with ``train_negatives_exclude="history"``,
``position_index="recent"`` (ReChorus counts from the newest item; THUDM from the oldest),
``d_a=8``, ``init_std=0.01`` / ``init_bias_std=0.01``, and the base's ``decay_biases=False``.

Training objective (``loss``): ``"sampled_softmax"`` (ComiRec: 10·B shared negatives with logQ
correction and accidental-hit removal; see :mod:`zoo.modules.sampled_softmax`),
``"full_softmax"`` (CE over all items) or ``"bpr"`` (ReChorus/TiMiRec Eq. 10, one negative).
ComiRec's controllable diversity aggregation only re-ranks at serving time (lambda = 0 in every
paper table here) and is not implemented.

Known behaviour (measured, not a bug): ComiRec-DR's interests are squashed capsules, so their
norm is at most 1 (measured on the embedded default) and a dot-product score can only grow
through the item's own norm.  On small data the item norms learn popularity and the ranking
collapses towards it: on MovieLens latest-small an early-stopped ComiRec-DR gives 90 % of every
user's top-50 from one common list, and trained 40 epochs it still tests at popularity's
Recall@10 (``benchmarks/results/collapse.md``).  MIND escapes the bound with the ReLU dense
layer after its capsules (official code) and keeps learning.  On a planted two-interest
structure ComiRec-DR learns like the others (``tests/test_learning.py``).

:class:`MultiInterestRecommender` holds what ComiRec, MIND and HPCL4SR share: the hard-readout
loss, max-over-interests scoring (chunked, with an interest mask), candidate scoring, and the
popularity hand-over for the popularity negative sampler.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from zoo.models.base import SequentialRecommender
from zoo.modules.multi_interest import CapsuleInterestExtractor, SelfAttentiveExtractor
from zoo.modules.sampled_softmax import NextItemLoss
from zoo.modules.scoring import best_interest, interest_max, max_interest_scores
from zoo.modules.transformer import init_weights

# the paper, read by `zoo models` from the source (zoo/catalog.py) without importing this file
PAPER = {"title": "Controllable Multi-Interest Framework for Recommendation", "authors": "Cen et al.", "venue": "KDD 2020"}

Interests = tuple[Tensor, Tensor | None]  # (V [B, K, d], active-interest mask [B, K] or None)


class MultiInterestRecommender(SequentialRecommender):
    """Shared part of the K-interest models: it owns the next-item objective ``self.rec_loss``
    (a :class:`NextItemLoss`); a subclass sets ``self.item_emb`` and implements :meth:`interests`.

    Args:
        loss: the next-item objective, ``"sampled_softmax"`` (shared negatives), ``"full_softmax"``
            or ``"bpr"`` (one negative per example).
        n_neg: shared negatives per batch of the sampled softmax.
        neg_sampler: ``"uniform"`` or ``"popularity"`` (the sampled softmax's negatives).
        logq_correction: subtract ``log(n_neg q(j))`` from each sampled logit.
        train_negatives_exclude: what a BPR negative avoids: ``"window"`` (the target and the
            example's history window; the zoo's default) or ``"history"`` (the user's whole
            training history, ReChorus ``BaseModel.py``; needs the datamodule's side info).
        **kwargs: :class:`SequentialRecommender` options.
    """

    pad_invariant = True  # pads are masked out of every extractor; positions are right-aligned or oldest-first

    item_emb: nn.Embedding
    rec_loss: NextItemLoss

    def __init__(
        self,
        loss: str = "sampled_softmax",
        n_neg: int = 1280,
        neg_sampler: str = "uniform",
        logq_correction: bool = True,
        train_negatives_exclude: str = "window",
        **kwargs: Any,
    ) -> None:
        """loss / n_neg / neg_sampler / logq_correction / train_negatives_exclude: the next-item
        objective (:class:`NextItemLoss`: sampled softmax with shared negatives, full softmax or
        BPR); **kwargs: :class:`SequentialRecommender` options."""
        super().__init__(**kwargs)
        self.rec_loss = NextItemLoss(
            self.num_items, loss, n_neg, neg_sampler, logq_correction, exclude=train_negatives_exclude
        )

    def interests(self, batch: dict[str, Tensor]) -> Interests:
        raise NotImplementedError

    def output_items(self) -> Tensor:
        """Item table scored against the interests ``[N+1, d]`` (tied with the input table)."""
        return self.item_emb.weight

    def user_representation(self, batch: dict[str, Tensor]) -> Interests:
        return self.interests(batch)

    def score_all(self, user_repr: Interests) -> Tensor:
        V, mask = user_repr
        return max_interest_scores(V, self.output_items(), mask, self.eval_chunk_size)  # [B, N+1]

    def score_candidates(self, user_repr: Interests, candidates: Tensor) -> Tensor:
        V, mask = user_repr
        s = torch.einsum("bkd,bcd->bkc", V, self.output_items()[candidates])  # [B, K, C]
        return interest_max(s, mask)  # [B, C]

    def interests_for_predict(self, user_repr: Interests) -> Tensor:
        return user_repr[0]

    def readout_loss(self, V: Tensor, mask: Tensor | None, batch: dict[str, Tensor]) -> Tensor:
        """L_rec on the best-matching interest (ComiRec Eq. 8, HPCL4SR Eq. 18-19)."""
        items = self.output_items()
        target = batch["target"]
        v = best_interest(V, items[target], mask)  # [B, d]
        return self.rec_loss(v, target, items, batch["item_seq"], batch.get("user"))

    def training_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        V, mask = self.interests(batch)
        return {"rec": self.readout_loss(V, mask, batch)}

    def attach_side_info(self, info: dict[str, Tensor]) -> None:
        self._side_info = info
        self.rec_loss.set_train_history(info, self.device)  # train_negatives_exclude="history" only
        if self.rec_loss.sampler == "popularity":
            if "popularity" not in info:
                raise ValueError("neg_sampler='popularity' needs the datamodule's 'popularity' side info")
            self.rec_loss.set_popularity(info["popularity"].to(self.device))


class ComiRec(MultiInterestRecommender):
    """ComiRec-SA / ComiRec-DR / ComiRec+ (see the module docstring).

    Args:
        extractor: ``"sa"`` (self-attentive) or ``"dr"`` (dynamic routing).
        d: embedding size.  K: number of interests.
        d_a: SA attention size (None = 4d as the THUDM code; TiMiRec's ReChorus code uses 8).
        max_len: longest history (position table, per-position capsule maps).
        transformer: ComiRec+ (SA only): one Transformer layer before the pooling.
        position_index: SA positions, ``"oldest"`` (THUDM: position 0 = the oldest item),
            ``"recent"`` (ReChorus: distance from the newest item) or ``"slot"`` (the same model
            as ``"recent"`` on max_len-padded batches; :class:`zoo.modules.embeddings.LearnedPositions`).
        activation / attn_projection: the ComiRec+ layer's FFN activation (``"gelu"``; ReChorus
            ``"relu"``) and attention output projection (True; ReChorus none).
        init_std / init_bias_std: normal init std of Linear/Embedding weights (0.02; ReChorus
            0.01) and of Linear biases (0 = zeros; ReChorus 0.01).  The DR capsule map keeps N(0, 1).
        pool: SA values, ``"raw"`` item embeddings (official codes) or ``"input"`` (pos-added /
            Transformer outputs; forced by nothing, the + recipe sets it).
        routing_iters / routing_softmax: DR iterations and softmax axis (``"interest"`` as
            ComiRec-TF, ``"position"`` as the PyTorch ports).
        loss / n_neg / neg_sampler / logq_correction: the training objective
            (:class:`zoo.modules.sampled_softmax.NextItemLoss`).
        **kwargs: :class:`SequentialRecommender` options (num_items, lr, topk, ...).
    """

    def __init__(
        self,
        extractor: str = "sa",
        d: int = 64,
        K: int = 4,
        d_a: int | None = None,
        max_len: int = 50,
        transformer: bool = False,
        pool: str = "raw",
        routing_iters: int = 3,
        routing_softmax: str = "interest",
        position_index: str = "oldest",
        activation: str = "gelu",
        attn_projection: bool = True,
        init_std: float = 0.02,
        init_bias_std: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters()
        if extractor not in ("sa", "dr"):
            raise ValueError(f"extractor must be 'sa' or 'dr', got {extractor!r}")
        if transformer and extractor != "sa":
            raise ValueError("transformer=True (ComiRec+) is defined for the self-attentive extractor only")
        self.extractor_type = extractor
        self.item_emb = nn.Embedding(self.num_items + 1, d, padding_idx=0)
        if extractor == "sa":
            self.extractor: nn.Module = SelfAttentiveExtractor(
                d, K, d_a or 4 * d, max_len, position_index=position_index, transformer=transformer, pool=pool,
                activation=activation, attn_projection=attn_projection,
            )
        else:
            self.extractor = CapsuleInterestExtractor(
                d, K, max_len, bilinear="per_position", iters=routing_iters, softmax_over=routing_softmax
            )
        init = partial(init_weights, std=init_std, bias_std=init_bias_std)
        init(self.item_emb)
        self.extractor.apply(init)  # Linear/Embedding N(0, init_std^2); the capsule map keeps N(0, 1)

    def interests(self, batch: dict[str, Tensor]) -> Interests:
        item_seq = batch["item_seq"]  # [B, L]
        pad_mask = item_seq > 0
        e = self.item_emb(item_seq) * pad_mask[..., None]  # [B, L, d]
        if self.extractor_type == "sa":
            return self.extractor(item_seq, e), None  # [B, K, d]
        return self.extractor(e, pad_mask), None  # [B, K, d]
