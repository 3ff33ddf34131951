"""SASRec (Kang & McAuley, ICDM 2018): self-attentive sequential recommendation.

The baseline every paper of the zoo compares against.  As in those papers' tables (and
RecBole), it is trained with cross-entropy over ALL items (``loss="ce"``); the original
paper's binary cross-entropy with one sampled negative is ``loss="bce"``.  With the
datamodule's ``train_sampling: all_prefixes`` the loss is at the last position of every
training prefix (RecBole); with ``train_sampling: windows`` it is at every position of each
window (the original SASRec), which supervises up to ``max_len`` targets per forward pass.

    E = LayerNorm(ItemEmb(s) + PosEmb) -> dropout            # [B, L, d]
    H = CausalTransformer(E)                                  # [B, L, d]
    score(i) = <H[:, -1], ItemEmb(i)>                          # shared item table
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.models.base import SequentialRecommender
from zoo.modules.dropout import Dropout
from zoo.modules.embeddings import LearnedPositions
from zoo.modules.scoring import dot_scores
from zoo.modules.transformer import TransformerEncoder, init_weights

# the paper, read by `zoo models` from the source (zoo/catalog.py) without importing this file
PAPER = {"title": "Self-Attentive Sequential Recommendation", "authors": "Kang & McAuley", "venue": "ICDM 2018"}


class SASRec(SequentialRecommender):
    """SASRec with a shared item table for input and output.

    Args:
        d: hidden size.  n_layers / n_heads: Transformer depth and heads.
        dropout: dropout on embeddings and inside the Transformer.
        max_len: longest history (the datamodule's ``max_len``).
        loss: ``"ce"`` (full softmax, the papers' tables) or ``"bce"`` (original SASRec, one
            uniformly sampled negative).
        position_index: ``"slot"`` (left-padded slots, the newest item always at position L-1:
            the original SASRec) or ``"oldest"`` (position 0 = the oldest item of the window:
            RecBole's right-padded convention, for like-for-like comparisons with it).
        **kwargs: :class:`SequentialRecommender` options (num_items, lr, topk, ...).
    """

    def __init__(
        self,
        d: int = 64,
        n_layers: int = 2,
        n_heads: int = 2,
        dropout: float = 0.2,
        max_len: int = 50,
        loss: str = "ce",
        position_index: str = "slot",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters()
        if loss not in ("ce", "bce"):
            raise ValueError(f"loss must be 'ce' or 'bce', got {loss!r}")
        self.loss_type = loss
        self.item_emb = nn.Embedding(self.num_items + 1, d, padding_idx=0)
        self.pos_emb = LearnedPositions(max_len, d, index=position_index)
        self.emb_norm = nn.LayerNorm(d, eps=1e-12)
        self.emb_dropout = Dropout(dropout)
        self.encoder = TransformerEncoder(d, n_layers, n_heads, 4 * d, dropout, causal=True)
        self.apply(init_weights)

    def encode(self, item_seq: Tensor, last_only: bool = False) -> Tensor:
        """item_seq ``[B, L]`` -> hidden states ``[B, L, d]`` (``last_only``: the last one, ``[B, d]``)."""
        h = self.emb_dropout(self.emb_norm(self.item_emb(item_seq) + self.pos_emb(item_seq)))  # [B, L, d]
        return self.encoder(h, item_seq > 0, last_only=last_only)

    def user_representation(self, batch: dict[str, Tensor]) -> Tensor:
        return self.encode(batch["item_seq"], last_only=True)  # [B, d] (state at the most recent item)

    def score_all(self, user_repr: Tensor) -> Tensor:
        return dot_scores(user_repr, self.item_emb.weight)  # [B, N+1]

    def ranking_factors(self, user_repr: Tensor) -> tuple[Tensor, Tensor]:
        return user_repr, self.item_emb.weight  # score_all = their product: chunked evaluation

    def score_candidates(self, user_repr: Tensor, candidates: Tensor) -> Tensor:
        return torch.einsum("bd,bcd->bc", user_repr, self.item_emb(candidates))  # [B, C]

    def training_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        if "target_seq" in batch:  # windows: the next item at every real position (original SASRec)
            h = self.encode(batch["item_seq"])  # [B, L, d]
            real = batch["target_seq"] > 0  # [B, L]
            u, target = h[real], batch["target_seq"][real]  # [M, d], [M]
        else:
            u = self.user_representation(batch)  # [B, d]
            target = batch["target"]
        if self.loss_type == "ce":
            logits = self.score_all(u)  # [B, N+1]
            logits[:, 0] = float("-inf")
            return {"rec": F.cross_entropy(logits, target)}
        neg = torch.randint(1, self.num_items + 1, target.shape, device=target.device)  # [B]
        pos_s = (u * self.item_emb(target)).sum(-1)
        neg_s = (u * self.item_emb(neg)).sum(-1)
        return {"rec": F.softplus(-pos_s).mean() + F.softplus(neg_s).mean()}
