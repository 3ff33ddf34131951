"""Per-user ranks (zoo/ranks.py): what the metrics hand to ``rank_sink`` recomputes every metric per
user, and the mean over users equals the metric's own result, for the full, sampled and
multi-target protocols (scores with many ties, NaN scores, repeated targets, a row without targets)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zoo.metrics import MultiTargetMetrics, RankingMetrics
from zoo.ranks import batch_ranks, concat_parts, load_ranks, make_ranks, per_user, save_ranks
from zoo.runfiles import ranks_path_for

N = 40  # items 1..N, column 0 = padding


def _batches(protocol: str, seed: int = 0):
    """Three batches of integer-valued scores (many ties) in the shape each protocol evaluates."""
    g = torch.Generator().manual_seed(seed)
    user = 0
    for B in (7, 5, 9):
        users = torch.arange(user, user + B) * 3 + 1  # user indices with gaps
        user += B
        if protocol == "sampled":
            scores = torch.randint(0, 6, (B, 21), generator=g).float()  # target = column 0
            scores[1, 0] = float("nan")
            yield users, scores, torch.zeros(B, dtype=torch.long)
            continue
        scores = torch.randint(0, 8, (B, N + 1), generator=g).float()
        scores[:, 0] = float("-inf")
        if protocol == "full":
            target = torch.randint(1, N + 1, (B,), generator=g)
            scores[0, target[0]] = float("nan")
            yield users, scores, target
        else:
            targets = torch.randint(1, N + 1, (B, 6), generator=g)
            targets[0, 3] = targets[0, 1]  # a repeated target
            targets[1, 4:] = 0  # padding
            targets[2] = 0  # a user without targets: not counted
            scores[3, targets[3, 0]] = float("nan")
            yield users, scores, targets


@pytest.mark.parametrize("protocol", ["full", "sampled", "multi"])
def test_per_user_metrics_average_to_the_metric(protocol, tmp_path):
    metric = (MultiTargetMetrics if protocol == "multi" else RankingMetrics)(ks=(1, 5, 10))
    assert metric.rank_sink is None  # nothing kept unless asked
    metric.rank_sink = []
    parts, first_row = [], None
    for users, scores, target in _batches(protocol):
        first_row = target[0].tolist() if first_row is None else first_row
        metric.update(scores, target)
        parts += [batch_ranks(e, users) for e in metric.rank_sink]
        metric.rank_sink.clear()
    expected = {k: float(v) for k, v in metric.compute().items()}
    ids = [f"u{i}" for i in range(100)]
    r = make_ranks(protocol, concat_parts(parts), ids, 21 if protocol == "sampled" else N, [1, 5, 10])
    path = save_ranks(tmp_path / "ranks.npz", r)
    with np.load(path, allow_pickle=False) as z:  # plain arrays only
        assert str(z["protocol"]) == protocol
    r = load_ranks(path)
    assert r.num_users == (18 if protocol == "multi" else 21)  # users without targets are left out
    assert r.user_id[0] == "u1" and r.user_id[1] == "u4"
    assert sorted(r.metric_names()) == sorted(expected)
    for name, value in expected.items():
        assert per_user(r, name).mean() == pytest.approx(value, abs=1e-6), name
    if protocol == "multi":  # distinct targets only; |T| keeps the repeat
        assert r.offsets[1] - r.offsets[0] == len(set(first_row)) < 6 and r.n_targets[0] == 6
    if protocol == "sampled":
        assert r.rank[1] == 20  # a NaN target score gets the worst rank


def test_ranks_file_names_and_bad_files(tmp_path):
    assert ranks_path_for(tmp_path / "test_metrics.json") == tmp_path / "ranks.npz"
    assert ranks_path_for(tmp_path / "test-20261130-010203-2.json") == tmp_path / "ranks-20261130-010203-2.npz"
    with pytest.raises(ValueError, match="test_metrics.json"):
        ranks_path_for(tmp_path / "validate_metrics.json")
    np.savez(tmp_path / "x.npz", rank=np.arange(3))
    with pytest.raises(ValueError, match="x.npz.*expected arrays"):
        load_ranks(tmp_path / "x.npz")
    (tmp_path / "y.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="y.npz.*not a readable"):
        load_ranks(tmp_path / "y.npz")
    r = make_ranks("full", {"user": np.array([0, 1]), "rank": np.array([0, 3])}, ["a", "b"], 5, [10])
    with pytest.raises(ValueError, match="not defined for the full protocol"):
        per_user(r, "ndcg_comirec@10")
    with pytest.raises(ValueError, match="evaluated twice"):
        make_ranks("full", {"user": np.array([1, 1]), "rank": np.array([0, 3])}, ["a", "b"], 5, [10])
