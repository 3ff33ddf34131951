"""Most-popular recommender: every user gets items ranked by training interaction counts.

The sanity floor of every table.  It has no parameters: its recipe sets ``max_epochs: 0``, so
``zoo fit`` goes straight to the test of the popularity ranking.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from zoo.models.base import SequentialRecommender

# the paper, read by `zoo models` from the source (zoo/catalog.py) without importing this file
PAPER = {"title": "most-popular items (no paper; the sanity floor of every table)", "authors": "", "venue": "-"}


class Pop(SequentialRecommender):
    """Most popular items (see the module docstring).

    Args:
        **kwargs: :class:`SequentialRecommender` options (num_items, topk, ...).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.register_buffer("popularity", torch.zeros(self.num_items + 1))  # [N+1], saved in checkpoints

    def attach_side_info(self, info: dict[str, Tensor]) -> None:
        if "popularity" not in info:
            raise ValueError("Pop needs the datamodule's training popularity counts")
        self.popularity.copy_(info["popularity"].to(self.popularity))

    def user_representation(self, batch: dict[str, Tensor]) -> Tensor:
        return batch["item_seq"].new_zeros(batch["item_seq"].shape[0])  # [B] (no user state)

    def score_all(self, user_repr: Tensor) -> Tensor:
        return self.popularity[None, :].expand(user_repr.shape[0], -1).clone()  # [B, N+1]

    def training_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        raise RuntimeError("Pop has nothing to train: use max_epochs: 0 (recipes/pop.yaml)")

    def configure_optimizers(self) -> None:
        return None
