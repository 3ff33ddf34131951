"""GRU sequence encoder for left-padded sequences (GRU4Rec; TiMiRec's interest predictor)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class GRUEncoder(nn.Module):
    """GRU over the real items only: padding never enters the recurrence.

    Left-padded input is packed by length, so the final hidden state is exactly the GRU's
    state after the most recent item (what RecBole's right-padded gather computes).
    """

    def __init__(self, d_in: int, d_hidden: int, n_layers: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.gru = nn.GRU(d_in, d_hidden, n_layers, batch_first=True, dropout=dropout if n_layers > 1 else 0.0)

    def forward(self, x: Tensor, pad_mask: Tensor) -> tuple[Tensor, Tensor]:
        """x ``[B, L, d_in]`` left-padded, pad_mask ``[B, L]`` ->
        (outputs ``[B, L, d_hidden]`` left-padded with zeros, last hidden state ``[B, d_hidden]``)."""
        B, L, _ = x.shape
        lengths = pad_mask.sum(1).clamp(min=1)  # [B]
        shift = (torch.arange(L, device=x.device)[None, :] + (L - lengths)[:, None]) % L  # left -> right padded
        x_right = x.gather(1, shift[:, :, None].expand_as(x))
        packed = pack_padded_sequence(x_right, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, h = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=L)  # [B, L, h] right-padded
        back = (torch.arange(L, device=x.device)[None, :] - (L - lengths)[:, None]) % L  # right -> left
        out = out.gather(1, back[:, :, None].expand(B, L, out.shape[-1]))
        out = out * pad_mask[:, :, None]
        return out, h[-1]
