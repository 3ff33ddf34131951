"""GRU4Rec (Hidasi et al., ICLR 2016; the RecBole variant the papers compare against).

    E = dropout(ItemEmb(s))                # [B, L, d]
    H = GRU(E);  u = Dense(h_last)         # [B, d]
    score(i) = <u, ItemEmb(i)>;  loss = cross-entropy over all items

The papers' tables train it as RecBole does, with cross-entropy over all items (``loss="ce"``).
ReChorus, which produced TiMiRec's table, trains it with BPR and one negative (``loss="bpr"``;
ReChorus draws the negative outside the user's whole training history,
``train_negatives_exclude="history"``).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from zoo.models.base import SequentialRecommender
from zoo.modules.dropout import Dropout
from zoo.modules.negatives import TrainNegatives, check_loss, one_negative_loss
from zoo.modules.rnn import GRUEncoder
from zoo.modules.scoring import dot_scores

# the paper, read by `zoo models` from the source (zoo/catalog.py) without importing this file
PAPER = {"title": "Session-based Recommendations with Recurrent Neural Networks", "authors": "Hidasi et al.", "venue": "ICLR 2016"}


class GRU4Rec(SequentialRecommender):
    """GRU4Rec, RecBole variant: embedding dropout, GRU, a dense layer to the item space.

    Args:
        d: embedding size.  d_hidden: GRU hidden size.  n_layers: GRU layers.
        dropout: dropout on the item embeddings.
        loss: ``"ce"`` (cross-entropy over all items, RecBole and the papers' tables) or ``"bpr"``
            (ReChorus: ``-log sigma(s+ - s-)`` with one uniform negative).
        train_negatives_exclude: what the ``bpr`` negative avoids: ``"none"`` (any item),
            ``"window"`` (the target and the history window) or ``"history"`` (the user's whole
            training history, ReChorus's ``train_clicked_set``; needs the datamodule's side info).
        **kwargs: :class:`SequentialRecommender` options (num_items, lr, topk, ...).
    """

    pad_invariant = True  # the GRU runs over the real items only (GRUEncoder)

    def __init__(self, d: int = 64, d_hidden: int = 128, n_layers: int = 1, dropout: float = 0.3, loss: str = "ce",
                 train_negatives_exclude: str = "none", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters()
        check_loss(loss, ("bpr",), train_negatives_exclude)
        self.loss_type = loss
        self.train_negatives = TrainNegatives(self.num_items, train_negatives_exclude)  # bpr's negative
        self.item_emb = nn.Embedding(self.num_items + 1, d, padding_idx=0)
        self.emb_dropout = Dropout(dropout)
        self.gru = GRUEncoder(d, d_hidden, n_layers)
        self.dense = nn.Linear(d_hidden, d)
        nn.init.xavier_normal_(self.item_emb.weight)

    def attach_side_info(self, info: dict[str, Tensor]) -> None:
        self.train_negatives.attach(info, self.device)  # train_negatives_exclude="history" only

    def user_representation(self, batch: dict[str, Tensor]) -> Tensor:
        seq = batch["item_seq"]
        _, h = self.gru(self.emb_dropout(self.item_emb(seq)), seq > 0)  # [B, d_hidden]
        return self.dense(h)  # [B, d]

    def score_all(self, user_repr: Tensor) -> Tensor:
        return dot_scores(user_repr, self.item_emb.weight)  # [B, N+1]

    def ranking_factors(self, user_repr: Tensor) -> tuple[Tensor, Tensor]:
        return user_repr, self.item_emb.weight  # score_all = their product: chunked evaluation

    def training_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        seq = batch["item_seq"]  # [B, L]
        row = None
        if "target_seq" in batch:  # windows: the next item at every real position
            out, _ = self.gru(self.emb_dropout(self.item_emb(seq)), seq > 0)  # [B, L, d_hidden]
            real = batch["target_seq"] > 0  # [B, L]
            u, target = self.dense(out[real]), batch["target_seq"][real]  # [M, d], [M]
            if self.loss_type != "ce":
                row = real.nonzero()[:, 0]  # [M] batch row of each target
        else:
            u, target = self.user_representation(batch), batch["target"]  # [B, d], [B]
        if self.loss_type == "bpr":
            return {"rec": one_negative_loss("bpr", self.train_negatives, u, target, self.item_emb.weight,
                                             seq, batch.get("user"), row)}
        logits = self.score_all(u)  # [M, N+1]
        logits[:, 0] = float("-inf")
        return {"rec": F.cross_entropy(logits, target)}
