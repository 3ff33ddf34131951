"""GRU sequence encoder for left-padded sequences (GRU4Rec; TiMiRec's interest predictor)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from zoo.modules.padding import newest_last, oldest_first


def gru_right_padded(gru: nn.GRU, x_right: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """A GRU over right-padded rows as one dense recurrence: x_right ``[B, L, d_in]``, lengths
    ``[B]`` (>= 1) -> (outputs ``[B, L, h]``, state after each row's last real item ``[B, h]``).

    The GRU is causal, so positions < length equal the packed GRU's outputs and ``out[length - 1]``
    its final state (exact up to float rounding; the positions after it are the caller's to drop).
    Against ``pack_padded_sequence``: no host sync (``lengths.cpu()``) and a backward without the
    packed form's zero-filled ``[sum(lengths), 3h]`` buffer per time step (TiMiRec's CPU step:
    1.19x faster, benchmarks/results/speed_train_2026-12-02.md).  Only for GRUs without inter-layer dropout, whose packed form draws one mask
    per packed row.
    """
    out, _ = gru(x_right)  # [B, L, h]
    last = out.gather(1, (lengths - 1)[:, None, None].expand(out.shape[0], 1, out.shape[-1])).squeeze(1)  # [B, h]
    return out, last


class GRUEncoder(nn.Module):
    """GRU over the real items only: padding never enters the recurrence.

    Left-padded rows are rotated oldest-first and run as one dense recurrence
    (:func:`gru_right_padded`; packed by length when inter-layer dropout is on), so the final
    hidden state is exactly the GRU's state after the most recent item (what RecBole's
    right-padded gather computes).  A row of pads only gives the state after one pad input (the
    pad embedding, zero in GRU4Rec).
    """

    def __init__(self, d_in: int, d_hidden: int, n_layers: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.gru = nn.GRU(d_in, d_hidden, n_layers, batch_first=True, dropout=dropout if n_layers > 1 else 0.0)

    def forward(self, x: Tensor, pad_mask: Tensor) -> tuple[Tensor, Tensor]:
        """x ``[B, L, d_in]`` left-padded, pad_mask ``[B, L]`` ->
        (outputs ``[B, L, d_hidden]`` left-padded with zeros, last hidden state ``[B, d_hidden]``)."""
        L = x.shape[1]
        lengths = pad_mask.sum(1).clamp(min=1)  # [B] (a row of pads only reads its first pad, the state after one pad)
        x_right = oldest_first(x, pad_mask)  # [B, L, d_in] right-padded
        if self.gru.num_layers > 1 and self.gru.dropout > 0 and self.training:
            # inter-layer dropout draws one mask per packed row: keep the packed form (same stream)
            packed = pack_padded_sequence(x_right, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out, h = self.gru(packed)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=L)  # [B, L, h] right-padded
            last = h[-1]
        else:
            # right-padded (gru_right_padded); the positions after each length are zeroed below
            out, last = gru_right_padded(self.gru, x_right, lengths)  # [B, L, h], [B, h]
        out = newest_last(out, pad_mask) * pad_mask[:, :, None]  # [B, L, h] left-padded, pads zero
        return out, last
