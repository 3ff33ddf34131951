"""SASRec (Kang & McAuley, ICDM 2018): self-attentive sequential recommendation.

The baseline every paper of the zoo compares against.  As in those papers' tables (and
RecBole), it is trained with cross-entropy over ALL items (``loss="ce"``); the original
paper's binary cross-entropy with one sampled negative is ``loss="bce"``, ReChorus's BPR with
one negative ``loss="bpr"``.  With the
datamodule's ``train_sampling: all_prefixes`` the loss is at the last position of every
training prefix (RecBole); with ``train_sampling: windows`` it is at every position of each
window (the original SASRec), which supervises up to ``max_len`` targets per forward pass.

    E = LayerNorm(ItemEmb(s) + PosEmb) -> dropout            # [B, L, d]
    H = CausalTransformer(E)                                  # [B, L, d]
    score(i) = <H[:, -1], ItemEmb(i)>                          # shared item table

Peer switches: ReChorus's SASRec (``src/models/sequential/SASRec.py`` on ``src/utils/layers.py``,
``src/models/BaseModel.py``) differs from the defaults here (RecBole's form) as follows;
``recipes/sasrec_rechorus.yaml`` sets every one of them (docs/compare.md "Peer differences"):

| switch | zoo default | ReChorus |
|---|---|---|
| ``loss`` | ``"ce"`` | ``"bpr"``, one negative |
| ``train_negatives_exclude`` | ``"none"`` | ``"history"`` (``train_clicked_set``) |
| ``input_layernorm`` | ``True`` | ``False`` (embeddings + positions go straight in) |
| ``d_ff`` | ``None`` = 4d | d (``d_ff=emb_size``) |
| ``activation`` | ``"gelu"`` | ``"relu"`` |
| ``attn_projection`` | ``True`` | ``False`` |
| ``ln_eps`` | 1e-12 | 1e-5 |
| ``init_std`` / ``init_bias_std`` | 0.02 / 0 | 0.01 / 0.01 |
| ``position_index`` | ``"slot"`` | ``"recent"`` (same model on max_len-padded batches) |
| ``decay_biases`` (base) | ``True`` | ``False`` |

Not switched: ReChorus applies no dropout to the input embeddings nor to the attention
probabilities, which ``dropout`` here does; moot at ReChorus's default dropout 0.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.models.base import SequentialRecommender
from zoo.modules.dropout import Dropout
from zoo.modules.embeddings import LearnedPositions
from zoo.modules.negatives import TrainNegatives, check_loss, one_negative_loss
from zoo.modules.scoring import dot_scores
from zoo.modules.transformer import TransformerEncoder, init_weights

# the paper, read by `zoo models` from the source (zoo/catalog.py) without importing this file
PAPER = {"title": "Self-Attentive Sequential Recommendation", "authors": "Kang & McAuley", "venue": "ICDM 2018"}


class SASRec(SequentialRecommender):
    """SASRec with a shared item table for input and output.

    Padding-invariant (``pad_invariant``): pads are masked keys, positions are right-aligned
    (``slot``/``recent``) or counted from the oldest real item, so evaluation drops all-pad columns.

    Args:
        d: hidden size.  n_layers / n_heads: Transformer depth and heads.
        dropout: dropout on embeddings and inside the Transformer.
        max_len: longest history (the datamodule's ``max_len``).
        loss: ``"ce"`` (full softmax, the papers' tables), ``"bce"`` (original SASRec, one
            uniformly sampled negative) or ``"bpr"`` (ReChorus: ``-log sigma(s+ - s-)``, one
            negative).
        position_index: ``"slot"`` (left-padded slots, the newest item always at position L-1:
            the original SASRec), ``"recent"`` (distance from the newest item: ReChorus; the same
            model as ``"slot"`` on the datamodule's max_len-padded batches, see
            :class:`zoo.modules.embeddings.LearnedPositions`) or ``"oldest"`` (position 0 = the
            oldest item of the window: RecBole's right-padded convention).
        train_negatives_exclude: what the ``bce``/``bpr`` negative avoids: ``"none"`` (any item,
            the original SASRec), ``"window"`` (the target and the input window's items) or
            ``"history"`` (the user's whole training history: ReChorus; needs the datamodule).
        input_layernorm: LayerNorm on item + position embeddings before the encoder (RecBole);
            ReChorus has none.
        d_ff: feed-forward inner size (None = 4d; ReChorus d).
        activation: feed-forward activation, ``"gelu"`` (RecBole) or ``"relu"`` (ReChorus).
        attn_projection: output projection after the attention heads (RecBole); ReChorus none.
        ln_eps: the Transformer's LayerNorm epsilon (1e-12 RecBole; ReChorus 1e-5).
        init_std / init_bias_std: normal init std of Linear/Embedding weights (0.02; ReChorus
            0.01) and of Linear biases (0 = zeros; ReChorus 0.01).
        **kwargs: :class:`SequentialRecommender` options (num_items, lr, topk, ...).
    """

    pad_invariant = True

    def __init__(
        self,
        d: int = 64,
        n_layers: int = 2,
        n_heads: int = 2,
        dropout: float = 0.2,
        max_len: int = 50,
        loss: str = "ce",
        position_index: str = "slot",
        train_negatives_exclude: str = "none",
        input_layernorm: bool = True,
        d_ff: int | None = None,
        activation: str = "gelu",
        attn_projection: bool = True,
        ln_eps: float = 1e-12,
        init_std: float = 0.02,
        init_bias_std: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters()
        check_loss(loss, ("bce", "bpr"), train_negatives_exclude)
        self.train_negatives = TrainNegatives(self.num_items, train_negatives_exclude)  # bce/bpr's negative
        self.loss_type = loss
        self.item_emb = nn.Embedding(self.num_items + 1, d, padding_idx=0)
        self.pos_emb = LearnedPositions(max_len, d, index=position_index)
        self.emb_norm = nn.LayerNorm(d, eps=1e-12) if input_layernorm else nn.Identity()
        self.emb_dropout = Dropout(dropout)
        self.encoder = TransformerEncoder(
            d, n_layers, n_heads, d_ff or 4 * d, dropout, causal=True, ln_eps=ln_eps,
            activation=activation, attn_projection=attn_projection,
        )
        self.apply(partial(init_weights, std=init_std, bias_std=init_bias_std))

    def attach_side_info(self, info: dict[str, Tensor]) -> None:
        self.train_negatives.attach(info, self.device)  # train_negatives_exclude="history" only

    def encode(self, item_seq: Tensor, last_only: bool = False) -> Tensor:
        """item_seq ``[B, L]`` -> hidden states ``[B, L, d]`` (``last_only``: the last one, ``[B, d]``)."""
        h = self.emb_dropout(self.emb_norm(self.item_emb(item_seq) + self.pos_emb(item_seq)))  # [B, L, d]
        return self.encoder(h, item_seq > 0, last_only=last_only)

    def sequence_states(self, batch: dict[str, Tensor], last_only: bool = False) -> Tensor:
        """The encoder's states of a batch ``[B, L, d]`` (``last_only``: ``[B, d]``): :meth:`encode`
        of ``item_seq``.  The one entry of training and evaluation, so a subclass that reads more of
        the batch (TiSASRec: timestamps, user ids) overrides only this."""
        return self.encode(batch["item_seq"], last_only=last_only)

    def user_representation(self, batch: dict[str, Tensor]) -> Tensor:
        return self.sequence_states(batch, last_only=True)  # [B, d] (state at the most recent item)

    def score_all(self, user_repr: Tensor) -> Tensor:
        return dot_scores(user_repr, self.item_emb.weight)  # [B, N+1]

    def ranking_factors(self, user_repr: Tensor) -> tuple[Tensor, Tensor]:
        return user_repr, self.item_emb.weight  # score_all = their product: chunked evaluation

    def score_candidates(self, user_repr: Tensor, candidates: Tensor) -> Tensor:
        return torch.einsum("bd,bcd->bc", user_repr, self.item_emb(candidates))  # [B, C]

    def training_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        item_seq = batch["item_seq"]  # [B, L]
        if "target_seq" in batch:  # windows: the next item at every real position (original SASRec)
            h = self.sequence_states(batch)  # [B, L, d]
            real = batch["target_seq"] > 0  # [B, L]
            u, target = h[real], batch["target_seq"][real]  # [M, d], [M]
            row = real.nonzero()[:, 0] if self.loss_type != "ce" else None  # [M] batch row of each target
        else:
            u = self.user_representation(batch)  # [B, d]
            target = batch["target"]
            row = None
        if self.loss_type == "ce":
            logits = self.score_all(u)  # [B, N+1]
            logits[:, 0] = float("-inf")
            return {"rec": F.cross_entropy(logits, target)}
        return {"rec": one_negative_loss(self.loss_type, self.train_negatives, u, target, self.item_emb.weight,
                                         item_seq, batch.get("user"), row)}
