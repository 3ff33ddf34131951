"""benchmarks/collapse.py: the consensus overlap and the interest statistics on known inputs."""

from __future__ import annotations

import pytest
import torch

from benchmarks.collapse import consensus_overlap, interest_stats, main, read_topk


def test_consensus_overlap_is_one_for_one_list_and_low_for_disjoint_lists() -> None:
    same = [["a", "b", "c"]] * 4
    assert consensus_overlap(same, 3) == (1.0, 3)
    disjoint = [[f"{u}-{i}" for i in range(3)] for u in range(4)]
    overlap, distinct = consensus_overlap(disjoint, 3)
    assert distinct == 12 and overlap == pytest.approx(3 / 12)  # the consensus holds 3 of the 12 items


def test_interest_stats_and_report(tmp_path) -> None:
    V = torch.zeros(3, 2, 4)
    V[:, 0, 0] = 2.0  # every user: the same direction in slot 0, norm 2
    V[0, 1, 1], V[1, 1, 2], V[2, 1, 3] = 1.0, 1.0, 1.0  # slot 1: three orthogonal directions
    torch.save(V, tmp_path / "interests.pt")
    st = interest_stats(tmp_path / "interests.pt")
    assert st["norm_min"] == 1.0 and st["norm_max"] == 2.0
    assert st["shared_direction"] == pytest.approx((1.0 + (1 / 3) ** 0.5) / 2)
    (tmp_path / "predictions.csv").write_text("user,items,scores\n0,a b,1 0.5\n1,a c,1 0.5\n")
    assert read_topk(tmp_path / "predictions.csv", 2) == [["a", "b"], ["a", "c"]]
    out = tmp_path / "report.md"
    main([str(tmp_path), "--k", "2", "--out", str(out)])
    assert "| 0.750 | 3 | 1.00 / 1.50 / 2.00 | 0.79 |" in out.read_text()


def test_clear_errors(tmp_path) -> None:
    (tmp_path / "predictions.csv").write_text("user,items,scores\n0,a,1\n")
    with pytest.raises(ValueError, match=r"predictions.csv:2: 1 items, fewer than --k 2"):
        read_topk(tmp_path / "predictions.csv", 2)
    with pytest.raises(FileNotFoundError, match="zoo predict"):
        main([str(tmp_path / "missing")])
