"""GRU4Rec (Hidasi et al., ICLR 2016; the RecBole variant the papers compare against).

    E = dropout(ItemEmb(s))                # [B, L, d]
    H = GRU(E);  u = Dense(h_last)         # [B, d]
    score(i) = <u, ItemEmb(i)>;  loss = cross-entropy over all items
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from zoo.models.base import SequentialRecommender
from zoo.modules.dropout import Dropout
from zoo.modules.rnn import GRUEncoder
from zoo.modules.scoring import dot_scores

# the paper, read by `zoo models` from the source (zoo/catalog.py) without importing this file
PAPER = {"title": "Session-based Recommendations with Recurrent Neural Networks", "authors": "Hidasi et al.", "venue": "ICLR 2016"}


class GRU4Rec(SequentialRecommender):
    """GRU4Rec, RecBole variant: embedding dropout, GRU, a dense layer to the item space.

    Args:
        d: embedding size.  d_hidden: GRU hidden size.  n_layers: GRU layers.
        dropout: dropout on the item embeddings.
        **kwargs: :class:`SequentialRecommender` options (num_items, lr, topk, ...).
    """

    pad_invariant = True  # the GRU runs over the real items only (GRUEncoder)

    def __init__(self, d: int = 64, d_hidden: int = 128, n_layers: int = 1, dropout: float = 0.3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.item_emb = nn.Embedding(self.num_items + 1, d, padding_idx=0)
        self.emb_dropout = Dropout(dropout)
        self.gru = GRUEncoder(d, d_hidden, n_layers)
        self.dense = nn.Linear(d_hidden, d)
        nn.init.xavier_normal_(self.item_emb.weight)

    def user_representation(self, batch: dict[str, Tensor]) -> Tensor:
        seq = batch["item_seq"]
        _, h = self.gru(self.emb_dropout(self.item_emb(seq)), seq > 0)  # [B, d_hidden]
        return self.dense(h)  # [B, d]

    def score_all(self, user_repr: Tensor) -> Tensor:
        return dot_scores(user_repr, self.item_emb.weight)  # [B, N+1]

    def ranking_factors(self, user_repr: Tensor) -> tuple[Tensor, Tensor]:
        return user_repr, self.item_emb.weight  # score_all = their product: chunked evaluation

    def training_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        if "target_seq" in batch:  # windows: the next item at every real position
            seq = batch["item_seq"]
            out, _ = self.gru(self.emb_dropout(self.item_emb(seq)), seq > 0)  # [B, L, d_hidden]
            real = batch["target_seq"] > 0
            logits = self.score_all(self.dense(out[real]))  # [M, N+1]
            target = batch["target_seq"][real]
        else:
            logits = self.score_all(self.user_representation(batch))  # [B, N+1]
            target = batch["target"]
        logits[:, 0] = float("-inf")
        return {"rec": F.cross_entropy(logits, target)}
