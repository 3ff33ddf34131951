"""Golden-value tests of the ranking metrics against hand-computed ranks."""

from __future__ import annotations

import math

import pytest
import torch

from zoo.metrics import MultiTargetMetrics, RankingMetrics, target_rank

INF = float("-inf")


def test_target_rank_pessimistic_ties():
    scores = torch.tensor([[INF, 0.9, 0.5, 0.5, 0.1],   # target item 2 ties with item 3 -> rank 2
                           [INF, 0.1, 0.2, 0.3, 0.4]])  # target item 4 is best -> rank 0
    assert target_rank(scores, torch.tensor([2, 4])).tolist() == [2, 0]


def test_all_equal_scores_get_no_credit():
    scores = torch.zeros(1, 101)
    scores[:, 0] = INF
    m = RankingMetrics(ks=[10])
    m.update(scores, torch.tensor([5]))
    assert m.compute()["hr@10"].item() == 0.0  # rank 99: ties count against the target


def test_nan_target_gets_worst_rank():
    scores = torch.tensor([[INF, float("nan"), 0.1, 0.2]])
    assert target_rank(scores, torch.tensor([1])).item() == 3


def test_full_ranking_golden_values():
    # ranks 0, 2, 5 for three users
    scores = torch.tensor([
        [INF, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # target 1 -> rank 0
        [INF, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # target 3 -> rank 2
        [INF, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # target 6 -> rank 5
    ])
    m = RankingMetrics(ks=[1, 3, 10])
    m.update(scores, torch.tensor([1, 3, 6]))
    r = m.compute()
    assert r["hr@1"].item() == pytest.approx(1 / 3)
    assert r["hr@3"].item() == pytest.approx(2 / 3)
    assert r["recall@3"].item() == pytest.approx(2 / 3)
    assert r["hr@10"].item() == pytest.approx(1.0)  # K larger than the candidate count: all hit
    assert r["ndcg@3"].item() == pytest.approx((1 + 1 / math.log2(4)) / 3)
    assert r["ndcg@10"].item() == pytest.approx((1 + 1 / math.log2(4) + 1 / math.log2(7)) / 3)
    assert r["mrr@3"].item() == pytest.approx((1 + 1 / 3) / 3)
    assert r["mrr@10"].item() == pytest.approx((1 + 1 / 3 + 1 / 6) / 3)


def test_accumulates_over_batches_like_one_batch():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(20, 30, generator=g)
    target = torch.randint(1, 30, (20,), generator=g)
    one, two = RankingMetrics(ks=[5, 10]), RankingMetrics(ks=[5, 10])
    one.update(scores, target)
    two.update(scores[:7], target[:7])
    two.update(scores[7:], target[7:])
    for k, v in one.compute().items():
        assert two.compute()[k].item() == pytest.approx(v.item())


def test_sampled_candidates_target_first_column():
    # target score 0.5 among negatives [0.9, 0.2, 0.5(tie)] -> rank 2
    scores = torch.tensor([[0.5, 0.9, 0.2, 0.5]])
    m = RankingMetrics(ks=[2, 3])
    m.update(scores, torch.zeros(1, dtype=torch.long))
    r = m.compute()
    assert r["hr@2"].item() == 0.0 and r["hr@3"].item() == 1.0
    assert r["ndcg@3"].item() == pytest.approx(1 / math.log2(4))


def test_multi_target_golden_values():
    # items 1..6 with descending scores; targets {2, 5} -> ranks 1 and 4
    scores = torch.tensor([[INF, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
    m = MultiTargetMetrics(ks=[2, 5], chunk_size=3)  # chunking must not change anything
    m.update(scores, torch.tensor([[2, 5, 0]]))
    r = m.compute()
    assert r["recall@2"].item() == pytest.approx(0.5)
    assert r["hr@2"].item() == 1.0
    idcg2 = 1 + 1 / math.log2(3)
    assert r["ndcg@2"].item() == pytest.approx((1 / math.log2(3)) / idcg2)
    assert r["recall@5"].item() == pytest.approx(1.0)
    assert r["ndcg@5"].item() == pytest.approx((1 / math.log2(3) + 1 / math.log2(6)) / idcg2)


def test_multi_target_ideal_dcg_capped_at_k_and_users_without_targets_skipped():
    scores = torch.tensor([[INF, 4.0, 3.0, 2.0, 1.0], [INF, 1.0, 1.0, 1.0, 1.0]])
    m = MultiTargetMetrics(ks=[2])
    m.update(scores, torch.tensor([[1, 2, 3], [0, 0, 0]]))  # second user has no target
    r = m.compute()
    assert r["ndcg@2"].item() == pytest.approx(1.0)  # top-2 both targets; ideal uses min(3, 2)
    assert r["recall@2"].item() == pytest.approx(2 / 3)
    assert m.count.item() == 1


def test_metric_state_is_constant_size():
    m = RankingMetrics(ks=[10, 20])
    sizes = {k: v.numel() for k, v in m.metric_state.items()}
    for _ in range(5):
        m.update(torch.randn(64, 100), torch.randint(1, 100, (64,)))
    assert {k: v.numel() for k, v in m.metric_state.items()} == sizes


def test_multi_target_duplicates_and_comirec_ndcg():
    """ComiRec: a repeated target counts twice in |T| but its item hits once; NDCG_comirec
    divides by the ideal DCG of the hits themselves."""
    scores = torch.tensor([[INF, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
    m = MultiTargetMetrics(ks=[3])
    m.update(scores, torch.tensor([[2, 2, 6]]))  # item 2 bought twice (rank 1), item 6 at rank 5
    r = m.compute()
    assert r["recall@3"].item() == pytest.approx(1 / 3)  # H = 1 distinct hit, |T| = 3
    assert r["hr@3"].item() == 1.0
    assert r["ndcg_comirec@3"].item() == pytest.approx(1 / math.log2(3))  # hit at rank 1, ideal = one hit at rank 0
    # standard: ideal over min(2 distinct targets, 3) = 2 positions
    assert r["ndcg@3"].item() == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
