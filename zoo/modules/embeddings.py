"""Item ID and position embeddings shared by the ID-based models."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LearnedPositions(nn.Module):
    """Learned absolute position embedding for LEFT-padded sequences ``[B, L]``.

    ``index="slot"``: position = slot index in a ``max_len`` window whose last slot holds the
    most recent item, which therefore always has position ``max_len - 1`` (SASRec's original
    left-padded convention); a shorter input ``[B, L]`` is the window's last L slots
    (``max_len - L .. max_len - 1``), so dropping all-pad leading columns changes nothing.
    ``index="recent"``: position = distance from the most recent item (newest 0, the one before
    1, ...): ReChorus's index (``SASRec.py``, ``ComiRec.py``, ``TiMiRec.py``: ``lengths - idx``,
    newest = 1, its row 0 reserved for pads).  ``"slot"`` and ``"recent"`` give the same model:
    slot p is recency ``max_len - 1 - p``, a fixed permutation of the rows of an
    i.i.d.-initialised table.
    ``index="oldest"``: position 0 = the oldest real item (RecBole's right-padded convention,
    used by HM4SR's code; MIRACLE's code left-pads with slot ids, ``"slot"``); pads get position 0
    and are masked anyway.
    """

    def __init__(self, max_len: int, d: int, index: str = "slot") -> None:
        super().__init__()
        if index not in ("slot", "recent", "oldest"):
            raise ValueError(f"index must be 'slot', 'recent' or 'oldest', got {index!r}")
        self.index = index
        self.embedding = nn.Embedding(max_len, d)

    def positions(self, item_seq: Tensor) -> Tensor:
        B, L = item_seq.shape
        if L > self.embedding.num_embeddings:
            raise ValueError(f"sequence length {L} exceeds max_len={self.embedding.num_embeddings}")
        pos = torch.arange(L, device=item_seq.device).expand(B, L)  # [B, L]
        if self.index == "slot":
            pos = pos + (self.embedding.num_embeddings - L)  # right-aligned in the max_len window
        elif self.index == "recent":
            pos = L - 1 - pos  # newest 0; pads (left) get larger indices and are masked anyway
        elif self.index == "oldest":
            n_pad = (item_seq == 0).sum(1, keepdim=True)  # [B, 1]
            pos = (pos - n_pad).clamp(min=0)
        return pos

    def forward(self, item_seq: Tensor) -> Tensor:
        return self.embedding(self.positions(item_seq))  # [B, L, d]
