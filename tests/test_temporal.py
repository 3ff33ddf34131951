"""Golden values of HORAE's time-interval bins (zoo/modules/temporal.py; HORAE Sec. 3.2.2, Eq. 5)
and of Fig. 7's alternatives: TiSASRec's relation matrix and THP's Hawkes encoding."""

from __future__ import annotations

import math

import torch

from zoo.modules.temporal import (
    HORAE_THRESHOLDS,
    adjacent_gaps,
    hawkes_encoding,
    relation_intervals,
    target_gaps,
    threshold_bins,
)

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


# ---------------------------------------------------------------- Fig. 7: TiSASRec's relation matrix
def test_relation_intervals_golden_clipped_and_scaled_by_the_users_minimum_gap():
    t0, k = 1_600_000_000, 8
    days = torch.tensor([0, 0, 0, 2, 3, 10])  # two left pads, then days 0, 2, 3, 10
    row0 = torch.where(torch.arange(6) >= 2, t0 + days * DAY, 0)
    row1 = t0 + torch.tensor([100, 100, 145, 190, 250, 1000])  # seconds; smallest non-zero gap 45 s
    time_seq = torch.stack([row0, row1])
    pad_mask = torch.tensor([[False, False, True, True, True, True], [True] * 6])
    r = relation_intervals(time_seq, pad_mask, k)
    assert r.dtype == torch.long and r.shape == (2, 6, 6)
    # row 0: r_min = 1 day; |0-10| = 10 days is clipped to k = 8; pairs with a pad are 0
    assert r[0].tolist() == [
        [0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0],
        [0, 0, 0, 2, 3, 8],
        [0, 0, 2, 0, 1, 8],
        [0, 0, 3, 1, 0, 7],
        [0, 0, 8, 8, 7, 0],
    ]
    # row 1: r_min = 45 s (the equal pair's 0 gap does not count); floor(105/45) = 2, floor(60/45) = 1,
    # floor(150/45) = 3, 855/45 = 19 -> 8
    assert r[1].tolist() == [
        [0, 0, 1, 2, 3, 8],
        [0, 0, 1, 2, 3, 8],
        [1, 1, 0, 1, 2, 8],
        [2, 2, 1, 0, 1, 8],
        [3, 3, 2, 1, 0, 8],
        [8, 8, 8, 8, 8, 0],
    ]


def test_relation_intervals_ignore_pad_timestamps_and_survive_one_item_and_equal_times():
    t = torch.tensor([[0, 0, 1_600_000_000], [1_600_000_000] * 3])
    pad_mask = torch.tensor([[False, False, True], [True, True, True]])
    assert relation_intervals(t, pad_mask, 256).tolist() == [[[0] * 3] * 3] * 2  # no non-zero gap: all 0
    noisy = t.clone()
    noisy[0, :2] = torch.tensor([5, 1_599_000_000])  # pads' timestamps are never read
    full = torch.tensor([[0, 1_000, 1_300]])
    assert torch.equal(relation_intervals(noisy, pad_mask, 256), relation_intervals(t, pad_mask, 256))
    assert relation_intervals(full, torch.ones_like(full, dtype=torch.bool), 2)[0, 0].tolist() == [0, 2, 2]  # 1300/300 = 4 -> 2


def test_relation_intervals_with_a_given_unit_floor_the_scaled_gap():
    """TiSASRec's paper form with the user's own r^u_min (``unit``), not the window's."""
    t = torch.tensor([[0, 50, 120], [0, 50, 120]]) + 1_600_000_000
    pad_mask = torch.ones(2, 3, dtype=torch.bool)
    r = relation_intervals(t, pad_mask, 256, unit=torch.tensor([40, 25]))
    # row 0: 50/40 -> 1, 120/40 -> 3, 70/40 -> 1;  row 1: 50/25 -> 2, 120/25 -> 4, 70/25 -> 2
    assert r.tolist() == [[[0, 1, 3], [1, 0, 1], [3, 1, 0]], [[0, 2, 4], [2, 0, 2], [4, 2, 0]]]
    # without a unit the window's minimum (50 s) scales both rows alike
    assert relation_intervals(t, pad_mask, 256)[0].tolist() == [[0, 1, 2], [1, 0, 1], [2, 1, 0]]


def test_relation_intervals_code_form_rounds_scaled_timestamps_half_to_even():
    """The authors' code (util.py): round((t - t_1) / r_min) per timestamp, then |difference|."""
    o = 1_600_000_000
    pad_mask = torch.ones(2, 3, dtype=torch.bool)
    t = o + torch.tensor([[0, 50, 120], [20, 60, 100]])
    r = relation_intervals(t, pad_mask, 256, unit=torch.tensor([40, 40]), origin=torch.tensor([o, o]))
    # row 0: 0, 1.25 -> 1, 3 -> 3: the pair (50 s, 120 s) is 2 here but floor(70/40) = 1 in the paper's form
    # row 1: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2 (half to even, as Python's round)
    assert r.tolist() == [[[0, 1, 3], [1, 0, 2], [3, 2, 0]], [[0, 2, 2], [2, 0, 0], [2, 0, 0]]]
    assert [round(x) for x in (0.5, 1.5, 2.5)] == [0, 2, 2]
    # against Python's round on random integer times, units, origins, with clipping at k = 7
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 10_000, (16, 6), generator=g).sort(1).values + o
    unit = torch.randint(1, 900, (16,), generator=g)
    origin = t[:, 0] - torch.randint(0, 50, (16,), generator=g)
    got = relation_intervals(t, torch.ones(16, 6, dtype=torch.bool), 7, unit=unit, origin=origin)
    for b in range(16):
        s = [round((int(x) - int(origin[b])) / int(unit[b])) for x in t[b]]
        assert got[b].tolist() == [[min(7, abs(si - sj)) for sj in s] for si in s], b
    # pads: 0, whatever their timestamps
    padded = torch.tensor([[False, True, True]] * 2)
    noisy = t[:2, :3].clone()
    noisy[:, 0] = torch.tensor([0, 123])
    r = relation_intervals(noisy, padded, 7, unit=unit[:2], origin=origin[:2])
    assert r[:, 0].eq(0).all() and r[:, :, 0].eq(0).all()


# ---------------------------------------------------------------- Fig. 7: THP's Hawkes encoding
def test_hawkes_encoding_equals_the_thp_formula():
    # z(t)_j = cos(t / 10000^((j-1)/d)) for odd j, sin(t / 10000^(j/d)) for even j (1-based j)
    t, d = 3.0, 4
    want = [math.cos(3.0), math.sin(3.0 / 100.0), math.cos(3.0 / 100.0), math.sin(3.0 / 10000.0)]
    got = hawkes_encoding(torch.tensor([[t]]), d)
    assert got.shape == (1, 1, d) and got.dtype == torch.float32
    torch.testing.assert_close(got[0, 0], torch.tensor(want), rtol=0, atol=1e-7)
    d = 6  # exponents 0, 2/6, 2/6, 4/6, 4/6, 1
    t = 12345.5  # a large time keeps its fraction (float64 inside)
    want = [math.cos(t), math.sin(t / 10000 ** (2 / 6)), math.cos(t / 10000 ** (2 / 6)),
            math.sin(t / 10000 ** (4 / 6)), math.cos(t / 10000 ** (4 / 6)), math.sin(t / 10000)]
    torch.testing.assert_close(hawkes_encoding(torch.tensor([t], dtype=torch.float64), d)[0], torch.tensor(want),
                               rtol=0, atol=1e-6)
    assert hawkes_encoding(torch.zeros(2, 3), 4)[..., 0::2].eq(1).all()  # t = 0: cos channels 1, sin 0
    assert hawkes_encoding(torch.zeros(2, 3), 4)[..., 1::2].eq(0).all()
