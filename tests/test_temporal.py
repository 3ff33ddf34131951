"""Golden values of HORAE's time-interval bins (zoo/modules/temporal.py; HORAE Sec. 3.2.2, Eq. 5)."""

from __future__ import annotations

import torch

from zoo.modules.temporal import HORAE_THRESHOLDS, adjacent_gaps, target_gaps, threshold_bins

DAY = 86400


def bins_of(days: list[float], scale: float = DAY, overflow_to_pad: bool = False) -> list[int]:
    gaps = torch.tensor([[round(x * scale) for x in days]], dtype=torch.long)
    return threshold_bins(gaps, torch.ones_like(gaps, dtype=torch.bool), scale, overflow_to_pad=overflow_to_pad)[0].tolist()


def test_zero_and_below_one_day_is_bin_zero():
    assert bins_of([0, 0.5, 0.999]) == [0, 0, 0]


def test_exact_thresholds_open_their_bin():
    # f_b(x) = number of thresholds <= x: each threshold itself starts bin i+1
    assert bins_of(list(HORAE_THRESHOLDS)) == list(range(1, 13))
    assert bins_of([13.9, 14, 29.99, 30, 1824, 1825]) == [4, 5, 5, 6, 11, 12]


def test_beyond_five_years_has_its_own_bin_and_code_overflow_switch():
    assert bins_of([1825, 4000, 20000]) == [12, 12, 12]  # paper: the final real bin
    assert bins_of([1825, 4000, 1824], overflow_to_pad=True) == [13, 13, 11]  # official code: the pad bin


def test_padding_is_bin_13_regardless_of_gap():
    gaps = torch.tensor([[5 * DAY, 0, 3000 * DAY]])
    pad_mask = torch.tensor([[False, False, True]])
    assert threshold_bins(gaps, pad_mask, DAY).tolist() == [[13, 13, 12]]


def test_online_retail_minutes_scale():
    # tau = 60: a 90-second gap is 1.5 minutes -> bin 1; 1825 minutes -> bin 12
    assert bins_of([90 / 60, 0.5, 1825], scale=60) == [1, 0, 12]


def test_paper_worked_example_rows_of_the_merged_table():
    # Fig. 3: d^a_2 in [14, 30) days -> 5, d^t_2 in [60, 120) days -> 7; N_a = 14 -> rows 5 and 21
    t = torch.tensor([[0, 10 * DAY, 30 * DAY]]) + 1_600_000_000
    target_time = t[:, 0] + 100 * DAY + 10 * DAY  # d^t_2 = 100 days
    pad_mask = torch.ones_like(t, dtype=torch.bool)
    adj = threshold_bins(adjacent_gaps(t, pad_mask, target_time), pad_mask, DAY)
    tgt = threshold_bins(target_gaps(t, pad_mask, target_time), pad_mask, DAY)
    assert adj[0, 1].item() == 5 and tgt[0, 1].item() == 7
    n_a = len(HORAE_THRESHOLDS) + 2
    assert (adj[0, 1].item(), n_a + tgt[0, 1].item()) == (5, 21)


def test_gaps_with_left_padding_and_last_item_uses_target():
    day = DAY
    time_seq = torch.tensor([[0, 0, 100 * day, 101 * day, 131 * day]])
    pad_mask = time_seq > 0
    target_time = torch.tensor([133 * day])
    assert adjacent_gaps(time_seq, pad_mask, target_time).tolist() == [[0, 0, day, 30 * day, 2 * day]]
    assert target_gaps(time_seq, pad_mask, target_time).tolist() == [[0, 0, 33 * day, 32 * day, 2 * day]]
    # d^a_N = d^t_N (spec H4)
    assert adjacent_gaps(time_seq, pad_mask, target_time)[0, -1] == target_gaps(time_seq, pad_mask, target_time)[0, -1]


def test_equal_timestamps_give_bin_zero_and_negative_gaps_are_clamped():
    t = torch.full((1, 4), 1_600_000_000)
    pad_mask = torch.ones_like(t, dtype=torch.bool)
    assert threshold_bins(adjacent_gaps(t, pad_mask, t[:, -1]), pad_mask, DAY).tolist() == [[0, 0, 0, 0]]
    assert threshold_bins(torch.tensor([[-5 * DAY]]), torch.tensor([[True]]), DAY).tolist() == [[0]]
