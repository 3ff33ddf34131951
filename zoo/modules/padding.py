"""Row rotations between the zoo's LEFT-padded batches and right-padded layouts.

Batches arrive left-padded (``[pads..., oldest, ..., newest]``, DESIGN.md's batch contract).
Where a paper indexes positions from the oldest item of a right-padded window (ComiRec-DR's
per-position weights, HPCL4SR Eq. 6) or a recurrence must start at the oldest real item (GRU4Rec,
TiMiRec's G_P), :func:`oldest_first` rotates each row so that slot 0 holds its oldest real item,
and :func:`newest_last` rotates such a row back.  A row of pads only is left as it is.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _rotate(x: Tensor, pad_mask: Tensor, sign: int) -> Tensor:
    """Row b of x ``[B, L, ...]`` (or ``[B, L]``) read from slot ``(j + sign * n_pad_b) % L``."""
    B, L = pad_mask.shape
    n_pad = (~pad_mask).sum(1, keepdim=True)  # [B, 1]
    idx = (torch.arange(L, device=x.device) + sign * n_pad) % L  # [B, L]
    if x.dim() == 2:
        return x.gather(1, idx)
    return x.gather(1, idx.view(B, L, *([1] * (x.dim() - 2))).expand_as(x))


def oldest_first(x: Tensor, pad_mask: Tensor) -> Tensor:
    """Rotate LEFT-padded rows so the oldest real item sits at slot 0 (right padding).

    x: ``[B, L, ...]`` (or ``[B, L]``); pad_mask: ``[B, L]`` bool, True at real items, pads
    first.  Returns the same shape; row b becomes ``[x_oldest, ..., x_newest, pads...]``.
    """
    return _rotate(x, pad_mask, +1)


def newest_last(x: Tensor, pad_mask: Tensor) -> Tensor:
    """The inverse of :func:`oldest_first`: right-padded rows ``[B, L, ...]`` back to left padding,
    pad_mask ``[B, L]`` being the LEFT-padded rows' mask (True at real items)."""
    return _rotate(x, pad_mask, -1)


__all__ = ["oldest_first", "newest_last"]
