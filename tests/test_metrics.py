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


def _reference_rank(scores: torch.Tensor, target: torch.Tensor, history: torch.Tensor | None) -> torch.Tensor:
    """The ranking step before it was fused (zoo/models/base.py until 2026-11-30), kept verbatim."""
    scores = scores.float().clone()
    scores[:, 0] = INF
    if history is not None:
        keep = scores.gather(1, target[:, None])
        scores.scatter_(1, history, INF)
        scores.scatter_(1, target[:, None], keep)
        scores[:, 0] = INF
    return target_rank(scores, target)


@pytest.mark.parametrize("with_history", [False, True], ids=["plain", "history"])
@pytest.mark.parametrize("chunk", [7, 64, 4096])
def test_fused_ranking_equals_the_reference_on_many_ties(with_history: bool, chunk: int) -> None:
    """masked_target_rank and factored_target_rank (chunked product, never materialised) give
    the reference ranks bit for bit: integer factors (scores with many exact ties), float
    factors, NaN and -inf scores, targets inside the history, the pad as target."""
    from zoo.metrics import factored_target_rank, masked_target_rank

    g = torch.Generator().manual_seed(0)
    B, N, d, H = 64, 300, 8, 12
    cases = [
        (torch.randint(-1, 2, (B, d), generator=g).float(), torch.randint(-1, 2, (N + 1, d), generator=g).float()),
        (torch.randn(B, d, generator=g), torch.randn(N + 1, d, generator=g)),
        (torch.randn(B, d, generator=g).round(), torch.randn(N + 1, d, generator=g).round()),
    ]
    users, items = cases[2]
    users[3, :] = float("nan")  # a NaN user: every score NaN
    items[17, 0] = float("inf")  # +inf/-inf/NaN item scores
    items[18, :] = float("-inf")
    cases.append((users, items))
    for users, items in cases:
        target = torch.randint(1, N + 1, (B,), generator=g)
        target[0] = 0  # the pad as target: -inf, worst rank
        target[1] = 17
        history = torch.randint(0, N + 1, (B, H), generator=g) if with_history else None
        if history is not None:
            history[2, 5] = target[2]  # a repeated target stays rankable
            history[4, :] = 17  # duplicates
        expected = _reference_rank(users @ items.T, target, history)
        fused = masked_target_rank((users @ items.T).float(), target, history)
        factored = factored_target_rank(users, items, target, history, chunk_size=chunk)
        assert torch.equal(fused, expected)
        assert torch.equal(factored, expected), (factored - expected).abs().max()
    # the ties are real: many targets share their score with other items
    users, items = cases[0]
    s = users @ items.T
    assert (s == s.gather(1, target[:, None])).sum(1).float().mean() > 10


def test_chunked_product_columns_are_the_products_columns() -> None:
    """What factored_target_rank relies on: a column chunk of ``U @ E.T`` equals those columns
    of the whole product bit for bit (checked on this machine's BLAS at realistic sizes)."""
    g = torch.Generator().manual_seed(1)
    U, E = torch.randn(512, 64, generator=g), torch.randn(5000, 64, generator=g)
    whole = U @ E.T
    for chunk in (512, 1000, 4096):
        assert torch.equal(torch.cat([U @ E[c : c + chunk].T for c in range(0, E.shape[0], chunk)], 1), whole)


def test_factored_rank_is_one_pass_and_falls_back_where_the_target_score_differs(monkeypatch) -> None:
    """factored_target_rank counts in ONE pass against the target scores of the small
    ``users @ items[target].T`` product; on this machine's BLAS those equal the chunked product's
    bit for bit (no row recomputed), and a row whose value differs in the last bit is recomputed
    in two passes and still gets the reference rank."""
    import zoo.metrics as M

    g = torch.Generator().manual_seed(2)
    B, N, d = 512, 5000, 64
    users, items = torch.randn(B, d, generator=g), torch.randn(N + 1, d, generator=g) * 0.1
    target = torch.randint(1, N + 1, (B,), generator=g)
    expected = _reference_rank(users @ items.T, target, None)
    recomputed: list[int] = []
    two_pass = M._two_pass_rank

    def spy(u, *args):
        recomputed.append(u.shape[0])
        return two_pass(u, *args)

    monkeypatch.setattr(M, "_two_pass_rank", spy)
    assert torch.equal(M.factored_target_rank(users, items, target, chunk_size=1000), expected)
    assert recomputed == []  # the one pass was exact for every row

    exact = M._target_scores
    off = torch.zeros(B, dtype=torch.bool)
    off[[3, 100, 511]] = True

    def nudged(u, e, t, *args):  # a BLAS whose small product differs in the last bit on 3 rows
        s = exact(u, e, t, *args)
        return torch.where(off, torch.nextafter(s, torch.full_like(s, float("inf"))), s)

    monkeypatch.setattr(M, "_target_scores", nudged)
    assert torch.equal(M.factored_target_rank(users, items, target, chunk_size=1000), expected)
    assert recomputed == [3]
