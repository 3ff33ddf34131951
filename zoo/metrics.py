"""Ranking metrics as torchmetrics ``Metric``s with sum states only.

Every state is a running sum (hits, DCG, reciprocal rank, number of evaluated users), reduced
with ``sum`` across processes, so memory is O(1) in the number of users and the result on N
processes equals the single-process result (up to float64 summation order).

Rank convention (all three metrics): the rank of a target is the number of OTHER candidates
whose score is greater than or EQUAL to the target's score (0 = first place).  A tie therefore
counts against the target (pessimistic), so a model that scores every item the same gets no
credit.  A NaN target score gets the worst rank.

* :class:`RankingMetrics` — one target per user, among all items (full ranking) or among a
  candidate list (sampled negatives, TiMiRec's protocol: the target is candidate column 0).
  HR@K (= Recall@K for a single target), NDCG@K = 1/log2(rank+2) if rank < K, MRR@K = 1/(rank+1).
* :class:`MultiTargetMetrics` — several targets per user (the ComiRec protocol HPCL4SR uses):
  Recall@K = distinct hits/|targets|, NDCG@K (standard) and NDCG_comirec@K (ideal DCG over the
  hits, as ComiRec/HPCL4SR report), HR@K = any hit.

Do not replace these by torchmetrics' ``Retrieval*`` metrics: those keep every score.

Per-user ranks: set ``metric.rank_sink = []`` and every ``update`` appends the ranks it computed
(a dict of tensors, see each class), so a test can write them out (``zoo.ranks``) without a
second ranking pass; ``None`` (the default) keeps nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric


def _ks(ks: Sequence[int]) -> list[int]:
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"top-K cut-offs must be positive integers, got {ks}")
    return ks


def target_rank(scores: Tensor, target_col: Tensor) -> Tensor:
    """Pessimistic 0-based rank of each row's target column.

    Args:
        scores: ``[B, C]`` candidate scores (excluded candidates already set to ``-inf``).
        target_col: ``[B]`` column index of the target in each row.
    Returns:
        ``[B]`` long ranks in ``[0, C-1]``.
    """
    ts = scores.gather(1, target_col[:, None])  # [B, 1]
    # ties count against the target; an int32 count is ~2x faster than summing bools (int64) on CPU
    rank = torch.sum(scores >= ts, dim=1, dtype=torch.int32).long() - 1  # [B]
    return torch.where(torch.isnan(ts[:, 0]), scores.shape[1] - 1, rank)


def _count_at_least(scores: Tensor, ts: Tensor, out: Tensor | None = None, cells: int = 1 << 21) -> Tensor:
    """``sum(scores >= ts[:, None], 1)`` as int32, in row blocks of ~``cells`` entries so the
    comparison's bool tensor stays in cache (one read of ``scores`` instead of three passes)."""
    B, C = scores.shape
    out = torch.zeros(B, dtype=torch.int32, device=scores.device) if out is None else out
    step = max(1, cells // max(C, 1))
    for r0 in range(0, B, step):
        out[r0 : r0 + step] += torch.sum(scores[r0 : r0 + step] >= ts[r0 : r0 + step, None], dim=1, dtype=torch.int32)
    return out


def masked_target_rank(scores: Tensor, target: Tensor, history: Tensor | None = None) -> Tensor:
    """Full-ranking rank of ``target [B]`` in ``scores [B, N+1]``, pad column (and ``history [B, H]``
    items other than the target, when given) excluded: exactly :func:`target_rank` after setting
    them to ``-inf``.  Masks ``scores`` IN PLACE, then counts in cache-sized row blocks."""
    scores[:, 0] = float("-inf")
    if history is not None:
        keep = scores.gather(1, target[:, None])  # [B, 1]
        scores.scatter_(1, history, float("-inf"))
        scores.scatter_(1, target[:, None], keep)  # a repeated target stays rankable
        scores[:, 0] = float("-inf")
    ts = scores.gather(1, target[:, None])[:, 0]  # [B]
    rank = _count_at_least(scores, ts).long() - 1
    return torch.where(torch.isnan(ts), scores.shape[1] - 1, rank)


def _mask_chunk(s: Tensor, c0: int, target: Tensor, history: Tensor | None) -> None:
    """Set the pad column and the history items other than the target to ``-inf`` in the item
    chunk ``s = scores[:, c0 : c0 + c]`` (in place)."""
    if c0 == 0:
        s[:, 0] = float("-inf")
    if history is not None:
        masked = (history >= max(c0, 1)) & (history < c0 + s.shape[1]) & (history != target[:, None])  # [B, H]
        hit = torch.zeros_like(s, dtype=torch.uint8)
        hit.scatter_reduce_(1, (history - c0).clamp(0, s.shape[1] - 1), masked.to(torch.uint8), "amax")
        s.masked_fill_(hit.bool(), float("-inf"))


def _take_target(s: Tensor, c0: int, target: Tensor, into: Tensor) -> Tensor:
    """``into`` [B] with each row's target score taken from the item chunk ``s = scores[:, c0 :
    c0 + c]`` where the target falls inside it (float32), the other rows unchanged."""
    inside = (target >= c0) & (target < c0 + s.shape[1])  # [B]
    col = (target - c0).clamp(0, s.shape[1] - 1)
    return torch.where(inside, s.gather(1, col[:, None])[:, 0].float(), into)


def _two_pass_rank(users: Tensor, items: Tensor, target: Tensor, history: Tensor | None, chunk_size: int) -> Tensor:
    """Exact ranks in two passes of the chunked product: the targets' scores, then the counts."""
    B, C = users.shape[0], items.shape[0]
    ts = torch.full((B,), float("nan"), device=users.device)  # [B]
    for c0 in range(0, C, chunk_size):
        ts = _take_target(users @ items[c0 : c0 + chunk_size].T, c0, target, ts)
    ts = ts.masked_fill(target == 0, float("-inf"))  # the pad column is always -inf
    count = torch.zeros(B, dtype=torch.int32, device=users.device)
    for c0 in range(0, C, chunk_size):
        s = (users @ items[c0 : c0 + chunk_size].T).float()  # [B, c]
        _mask_chunk(s, c0, target, history)
        _count_at_least(s, ts, out=count)
    return torch.where(torch.isnan(ts), C - 1, count.long() - 1)


_CHUNK_CELLS = 1 << 20  # scores per product chunk in factored_target_rank


def _target_scores(users: Tensor, items: Tensor, target: Tensor, rows: int = 1024) -> Tensor:
    """``[B]`` each row's score of its own target, ``diag(users @ items[target].T)``, from a
    matrix product of ``rows`` target columns at a time (the scores as a product computes them,
    not a row-wise dot, whose summation order differs)."""
    out = torch.empty(users.shape[0], device=users.device)
    for r0 in range(0, users.shape[0], rows):
        u, e = users[r0 : r0 + rows], items[target[r0 : r0 + rows]]  # [b, d], [b, d]
        out[r0 : r0 + rows] = (u @ e.T).float().diagonal()
    return out


def factored_target_rank(
    users: Tensor, items: Tensor, target: Tensor, history: Tensor | None = None, chunk_size: int = 4096
) -> Tensor:
    """:func:`masked_target_rank` of ``scores = (users @ items.T).float()`` without materialising it.

    The product is computed in item chunks of ``chunk_size`` columns that stay in cache, with the
    pad column and history items set to ``-inf`` inside each chunk, and ``scores >= t`` is counted
    chunk by chunk.  Column chunks of a matrix product are the product's columns (checked bit for
    bit against the unchunked product in the tests); per-row results never depend on other rows.

    The chunk is also capped at ``2^20 / B`` columns: a 4 MB chunk is counted while it is still in
    cache (measured at Office size, one thread: 512 users x 4,096 items per chunk 36 ms per batch,
    x 2,048 items 27 ms).

    One pass, checked: the target's score ``t`` is taken beforehand from the small product
    ``users @ items[target].T`` (its diagonal, :func:`_target_scores`), and again from the
    target's chunk during the pass.  Where the two are bitwise equal, the count is exactly what
    a count against the chunk's own value gives.  Rows where a BLAS gave a different last bit
    (another kernel for another shape; none seen on this machine's) are recomputed in two
    passes: the target's score from its chunk, then the counts (:func:`_two_pass_rank`).

    Args:
        users: ``[B, d]``; items: ``[N+1, d]`` (row 0 = padding); target: ``[B]`` item ids;
        history: ``[B, H]`` item ids to exclude (0 = padding) or None.
    Returns:
        ``[B]`` long ranks.
    """
    B, C = users.shape[0], items.shape[0]
    chunk_size = max(1, min(chunk_size, _CHUNK_CELLS // max(B, 1)))  # a [B, chunk] product of <= 4 MB
    t = _target_scores(users, items, target).masked_fill(target == 0, float("-inf"))  # [B]
    t_chunk = torch.full((B,), float("nan"), device=users.device)  # [B] t as its chunk computes it
    count = torch.zeros(B, dtype=torch.int32, device=users.device)
    for c0 in range(0, C, chunk_size):
        s = (users @ items[c0 : c0 + chunk_size].T).float()  # [B, c]
        t_chunk = _take_target(s, c0, target, t_chunk)
        _mask_chunk(s, c0, target, history)
        _count_at_least(s, t, out=count)
    t_chunk = t_chunk.masked_fill(target == 0, float("-inf"))
    rank = torch.where(torch.isnan(t), C - 1, count.long() - 1)  # [B]
    differ = (t_chunk != t) & ~(torch.isnan(t_chunk) & torch.isnan(t))  # [B]
    if bool(differ.any()):
        rows = differ.nonzero()[:, 0]
        rank[rows] = _two_pass_rank(users[rows], items, target[rows], None if history is None else history[rows], chunk_size)
    return rank


class RankingMetrics(Metric):
    """HR/Recall, NDCG and MRR @K for one target per user (full or sampled ranking)."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, ks: Sequence[int] = (10, 20, 50), **kwargs) -> None:
        super().__init__(**kwargs)
        self.ks = _ks(ks)
        n = len(self.ks)
        for name in ("hits", "dcg", "rr"):
            self.add_state(name, default=torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.rank_sink: list[dict[str, Tensor]] | None = None  # receives {"rank": [B]} per update

    def update_ranks(self, rank: Tensor) -> None:
        """Accumulate already computed 0-based ranks ``[B]``."""
        if self.rank_sink is not None:
            self.rank_sink.append({"rank": rank.detach()})
        k = torch.tensor(self.ks, device=rank.device)  # [nK]
        r = rank.to(torch.float64)[:, None]  # [B, 1]
        hit = rank[:, None] < k  # [B, nK]
        self.hits += hit.sum(0).to(torch.float64)
        self.dcg += torch.where(hit, 1.0 / torch.log2(r + 2.0), 0.0).sum(0)
        self.rr += torch.where(hit, 1.0 / (r + 1.0), 0.0).sum(0)
        self.count += rank.shape[0]

    def update(self, scores: Tensor | None = None, target_col: Tensor | None = None, ranks: Tensor | None = None) -> None:
        """scores ``[B, C]``; target_col ``[B]`` (the item id under full ranking, 0 when sampled);
        or ``ranks=[B]`` already computed (e.g. by :func:`factored_target_rank`)."""
        self.update_ranks(target_rank(scores, target_col) if ranks is None else ranks)

    def compute(self) -> dict[str, Tensor]:
        n = self.count.clamp(min=1)
        out: dict[str, Tensor] = {}
        for i, k in enumerate(self.ks):
            hr = (self.hits[i] / n).float()
            out[f"hr@{k}"] = hr
            out[f"recall@{k}"] = hr
            out[f"ndcg@{k}"] = (self.dcg[i] / n).float()
            out[f"mrr@{k}"] = (self.rr[i] / n).float()
        return out


class MultiTargetMetrics(Metric):
    """Recall@K, NDCG@K and HR@K for a set of targets per user (the ComiRec protocol).

    Targets are ``[B, T]`` item ids padded with 0 and may repeat (repeat purchases).  Following
    ComiRec: H = the number of DISTINCT target items ranked in the top K, Recall@K = H / |T|
    (|T| counts duplicates), HR@K = [H > 0].  Two NDCGs share DCG = sum over the distinct hits of
    1/log2(rank+2): ``ndcg`` divides by the ideal DCG of min(#distinct targets, K) hits (the
    standard one), ``ndcg_comirec`` by the ideal DCG of the H hits themselves (ComiRec/HPCL4SR's
    tables; 0 when H = 0).  Each target is ranked against all items with the pessimistic tie
    rule, in item chunks, so no ``[B, T, N]`` tensor is built.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, ks: Sequence[int] = (20, 50), chunk_size: int = 4096, **kwargs) -> None:
        super().__init__(**kwargs)
        self.ks, self.chunk_size = _ks(ks), chunk_size
        n = len(self.ks)
        for name in ("recall", "dcg_ratio", "dcg_ratio_comirec", "hr"):
            self.add_state(name, default=torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        # receives per update {"rows": [B] bool (rows with a target), "rank": [B', T] (-1 where not the
        # first occurrence of a distinct target), "n_targets": [B'] (|T| with duplicates)}
        self.rank_sink: list[dict[str, Tensor]] | None = None

    def update(self, scores: Tensor, targets: Tensor) -> None:
        """scores ``[B, N+1]`` (pad column already ``-inf``); targets ``[B, T]`` padded with 0."""
        valid = targets > 0  # [B, T]
        keep = valid.any(1)
        scores, targets, valid = scores[keep], targets[keep], valid[keep]
        if scores.shape[0] == 0:
            return
        T = targets.shape[1]
        same = targets[:, :, None] == targets[:, None, :]  # [B, T, T]
        earlier = torch.ones(T, T, dtype=torch.bool, device=targets.device).tril(-1)
        first = valid & ~(same & earlier).any(-1)  # first occurrence of each distinct target
        ts = scores.gather(1, targets)  # [B, T]
        rank = torch.zeros_like(targets)
        for c0 in range(0, scores.shape[1], self.chunk_size):
            chunk = scores[:, c0 : c0 + self.chunk_size]  # [B, C]
            rank += torch.sum(chunk[:, None, :] >= ts[:, :, None], dim=-1, dtype=torch.int32)  # [B, T]
        rank = torch.where(torch.isnan(ts), scores.shape[1], rank - 1)
        n_t = valid.sum(1).to(torch.float64)  # |T| with duplicates
        if self.rank_sink is not None:
            self.rank_sink.append({"rows": keep, "rank": torch.where(first, rank, -1).long(), "n_targets": valid.sum(1)})
        n_distinct = first.sum(1).to(torch.float64)
        r = rank.to(torch.float64)

        def ideal(n_hits: Tensor, k: int) -> Tensor:
            pos = torch.arange(k, device=scores.device, dtype=torch.float64)  # [k]
            return ((pos[None, :] < n_hits[:, None]) / torch.log2(pos + 2.0)).sum(1)

        for i, k in enumerate(self.ks):
            hit = first & (rank < k)  # [B, T]
            n_hit = hit.sum(1).to(torch.float64)
            dcg = torch.where(hit, 1.0 / torch.log2(r + 2.0), 0.0).sum(1)
            self.recall[i] += (n_hit / n_t).sum()
            self.dcg_ratio[i] += (dcg / ideal(n_distinct.clamp(max=k), k)).sum()
            self.dcg_ratio_comirec[i] += torch.where(n_hit > 0, dcg / ideal(n_hit, k).clamp(min=1e-12), 0.0).sum()
            self.hr[i] += (n_hit > 0).to(torch.float64).sum()
        self.count += scores.shape[0]

    def compute(self) -> dict[str, Tensor]:
        n = self.count.clamp(min=1)
        out: dict[str, Tensor] = {}
        for i, k in enumerate(self.ks):
            out[f"recall@{k}"] = (self.recall[i] / n).float()
            out[f"ndcg@{k}"] = (self.dcg_ratio[i] / n).float()
            out[f"ndcg_comirec@{k}"] = (self.dcg_ratio_comirec[i] / n).float()
            out[f"hr@{k}"] = (self.hr[i] / n).float()
        return out
