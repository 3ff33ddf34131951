"""Time features shared by HORAE (threshold bins; Fig. 7's relation matrix and Hawkes encoding),
TiSASRec (the relation matrix) and HM4SR (log buckets, day of year).

Timestamps travel in every batch as int64 seconds (``time_seq [B, L]``, ``target_time [B]``,
0 at pads).  Models turn gaps into bucket ids here and embed them themselves; the one
parameter-free encoding (:func:`hawkes_encoding`) is computed here whole, and the one embedding
two models share (:class:`RelationEmbedding`, TiSASRec's and HORAE Fig. 7's) lives here too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from zoo.modules.dropout import Dropout

HORAE_THRESHOLDS: tuple[float, ...] = (1, 2, 4, 7, 14, 30, 60, 120, 180, 365, 730, 1825)


def threshold_bins(
    gap_seconds: Tensor,
    pad_mask: Tensor,
    scale_seconds: float,
    thresholds: Sequence[float] = HORAE_THRESHOLDS,
    overflow_to_pad: bool = False,
) -> Tensor:
    """HORAE's binning f_b (Eq. 5): the number of thresholds <= gap / scale.

    Bins 0..len(thresholds) are real (the last one is "beyond the last threshold", e.g.
    >= 5 years for days); bin ``len(thresholds)+1`` is padding.  ``overflow_to_pad=True``
    reproduces the official code, which files gaps beyond the last threshold under the pad bin.

    Args:
        gap_seconds: ``[B, L]`` non-negative gaps in seconds (negative gaps are clamped to 0).
        pad_mask: ``[B, L]`` bool, True at real positions.
        scale_seconds: the per-dataset time unit tau (86400 for Amazon days, 60 for Online Retail).
    Returns:
        ``[B, L]`` long bin ids in ``[0, len(thresholds) + 1]``.
    """
    thr = torch.tensor(thresholds, dtype=torch.float64, device=gap_seconds.device)
    x = gap_seconds.clamp(min=0).to(torch.float64) / scale_seconds
    bins = torch.bucketize(x, thr, right=True)  # [B, L]  number of thresholds <= x
    pad_bin = len(thresholds) + 1
    if overflow_to_pad:
        bins = bins.masked_fill(bins == len(thresholds), pad_bin)
    return bins.masked_fill(~pad_mask, pad_bin)


def log_buckets(gap_seconds: Tensor, mu: float = 100.0) -> Tensor:
    """HM4SR's interval bucket (Eq. 11): ``floor(mu * log2(gap + 1))`` with gaps in seconds."""
    return torch.floor(mu * torch.log2(gap_seconds.clamp(min=0).to(torch.float64) + 1.0)).long()


def adjacent_gaps(time_seq: Tensor, pad_mask: Tensor, target_time: Tensor | None = None) -> Tensor:
    """Gap from each item to the NEXT one, ``t_{i+1} - t_i`` (HORAE's d^a_i).

    For the most recent item the next timestamp is ``target_time`` (so d^a_N = d^t_N) when given,
    else 0.  time_seq ``[B, L]`` (left-padded) -> ``[B, L]`` int64; 0 at pads.
    """
    nxt = torch.cat([time_seq[:, 1:], (target_time if target_time is not None else time_seq[:, -1])[:, None]], 1)
    return (nxt - time_seq).masked_fill(~pad_mask, 0)


def previous_gaps(time_seq: Tensor, pad_mask: Tensor) -> Tensor:
    """Gap SINCE the previous item, ``t_i - t_{i-1}``, with 0 for each sequence's first item
    (HM4SR's a_1 = 0), also right after left padding.  ``[B, L]`` -> ``[B, L]`` int64, 0 at pads."""
    prev = torch.cat([time_seq[:, :1], time_seq[:, :-1]], 1)
    prev_real = torch.cat([pad_mask[:, :1], pad_mask[:, :-1]], 1) & pad_mask
    return torch.where(prev_real, time_seq - prev, torch.zeros_like(time_seq)).masked_fill(~pad_mask, 0)


def target_gaps(time_seq: Tensor, pad_mask: Tensor, target_time: Tensor) -> Tensor:
    """Gap from each item to the target, ``t_{N+1} - t_i`` (HORAE's d^t_i); 0 at pads."""
    return (target_time[:, None] - time_seq).masked_fill(~pad_mask, 0)


def relation_intervals(
    time_seq: Tensor,
    pad_mask: Tensor,
    max_interval: int,
    unit: Tensor | None = None,
    origin: Tensor | None = None,
) -> Tensor:
    """TiSASRec's personalised relation matrix (Li et al., WSDM 2020, Sec. 3.2) of each window.

    ``r_ij = min(k, floor(|t_i - t_j| / r_min))`` for every pair of real positions (the paper's
    form), with ``k`` = ``max_interval`` and ``r_min`` = ``unit`` when given (TiSASRec's r^u_min,
    the smallest non-zero gap of the user's whole sequence, which the datamodule hands over), else
    the smallest non-zero ``|t_i - t_j|`` of the batch's window (the only history a batch carries;
    1 second when every timestamp is equal).  With ``origin`` the authors' code's form instead
    (``util.py``: each timestamp is scaled from the user's first one and rounded, then differenced):
    ``r_ij = min(k, |round((t_i - o) / r_min) - round((t_j - o) / r_min)|)``, rounding half to even
    as Python's ``round``, in integer arithmetic.  Pairs with a pad get 0: pads are masked keys,
    and their rows never depend on the pads' timestamps.

    Args:
        time_seq: ``[B, L]`` int64 seconds (left-padded).
        pad_mask: ``[B, L]`` bool, True at real positions.
        max_interval: the clipping threshold k (>= 1).
        unit: optional ``[B]`` int64 seconds (>= 1), each row's r_min.
        origin: optional ``[B]`` int64 seconds, each row's time origin o (the code's rounding form).
    Returns:
        ``[B, L, L]`` long intervals in ``[0, k]``; symmetric, 0 on the diagonal.
    """
    diff = (time_seq[:, :, None] - time_seq[:, None, :]).abs()  # [B, L, L] seconds
    pair = pad_mask[:, :, None] & pad_mask[:, None, :]  # [B, L, L] both real
    if unit is None:
        never = torch.iinfo(diff.dtype).max
        r_min = diff.masked_fill(~pair | (diff == 0), never).amin(dim=(1, 2))  # [B]
        r_min = torch.where(r_min == never, torch.ones_like(r_min), r_min)  # no non-zero gap: unit scale
    else:
        r_min = unit.to(diff.dtype).clamp(min=1)  # [B]
    if origin is None:  # the paper: floor of the scaled gap
        r = torch.div(diff, r_min[:, None, None], rounding_mode="floor")  # [B, L, L]
    else:  # the code: rounded scaled timestamps, differenced
        x = time_seq - origin.to(time_seq.dtype)[:, None]  # [B, L] seconds since the origin
        q = torch.div(x, r_min[:, None], rounding_mode="floor")  # [B, L]
        twice_rem = 2 * (x - q * r_min[:, None])  # [B, L] in [0, 2 r_min)
        up = (twice_rem > r_min[:, None]) | ((twice_rem == r_min[:, None]) & (q % 2 == 1))  # half to even
        scaled = q + up.long()  # [B, L] round(x / r_min)
        r = (scaled[:, :, None] - scaled[:, None, :]).abs()  # [B, L, L]
    return r.clamp(max=max_interval).masked_fill(~pair, 0)


class RelationEmbedding(nn.Module):
    """TiSASRec's interval key/value embeddings E^K_R, E^V_R ``[(k+1), d]`` of the clipped relation
    matrix (:func:`relation_intervals`), with dropout as the authors' code: TiSASRec, and HORAE's
    Fig. 7 "Relation Matrix"."""

    def __init__(self, max_interval: int, d: int, dropout: float) -> None:
        super().__init__()
        self.max_interval = max_interval
        self.key = nn.Embedding(max_interval + 1, d)  # E^K_R
        self.value = nn.Embedding(max_interval + 1, d)  # E^V_R
        self.dropout = Dropout(dropout)

    def forward(
        self, time_seq: Tensor, pad_mask: Tensor, unit: Tensor | None = None, origin: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """time_seq, pad_mask ``[B, L]`` (unit, origin ``[B]``: :func:`relation_intervals`) ->
        ``(r^K, r^V)``, each ``[B, L, L, d]``."""
        r = relation_intervals(time_seq, pad_mask, self.max_interval, unit, origin)  # [B, L, L]
        return self.dropout(self.key(r)), self.dropout(self.value(r))


def hawkes_encoding(t: Tensor, d: int) -> Tensor:
    """Transformer Hawkes Process's temporal encoding (Zuo et al., ICML 2020, Eq. 2) of times ``t``.

    For j = 1..d (1-based): ``z(t)_j = cos(t / 10000^((j-1)/d))`` for odd j and
    ``sin(t / 10000^(j/d))`` for even j: the Transformer's position encoding with the (real-valued)
    time in place of the position.  Computed in float64 (times of 10^5-10^7 units keep their
    fractions) and returned as float32.

    Args:
        t: ``[...]`` times in the model's unit (any real dtype).
        d: encoding size.
    Returns:
        ``[..., d]`` float32.
    """
    j = torch.arange(1, d + 1, device=t.device, dtype=torch.float64)  # [d] 1-based
    odd = j % 2 == 1
    exponent = torch.where(odd, j - 1, j) / d  # [d]
    angle = t.to(torch.float64)[..., None] / torch.pow(10000.0, exponent)  # [..., d]
    return torch.where(odd, torch.cos(angle), torch.sin(angle)).float()


DAY_SECONDS = 86400


def day_of_year(seconds: Tensor) -> Tensor:
    """0-based day of the (proleptic Gregorian, UTC) year of Unix ``seconds``: 0..365, same shape.

    Integer civil-from-days arithmetic (H. Hinnant's algorithm), so it runs on any device and
    never leaves int64: days since 1970-01-01 -> day of a March-based year -> January-based.
    """
    days = torch.div(seconds, DAY_SECONDS, rounding_mode="floor")
    z = days + 719468  # days since 0000-03-01
    era = torch.div(z, 146097, rounding_mode="floor")
    doe = z - era * 146097  # [0, 146096]  day of the 400-year era
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365  # [0, 399]
    doy_march = doe - (365 * yoe + yoe // 4 - yoe // 100)  # [0, 365]  day since March 1
    year = yoe + era * 400 + (doy_march >= 306).long()  # January/February belong to the next year
    leap = ((year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))).long()
    return torch.where(doy_march >= 306, doy_march - 306, doy_march + 59 + leap)
