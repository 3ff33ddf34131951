"""HPCL4SR's global category graph (Eqs. 1-4) against a small example computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from zoo.modules.category_graph import (
    CategoryGraphEncoder,
    build_propagation,
    category_adjacency,
    diffusion_matrix,
    normalized_adjacency,
)

# Three categories; training category sequences [1, 2, 1, 3], [2, 3] and [2, 2].
# Directed adjacent pairs (the datamodule's category_transitions): 1->2, 2->1, 1->3, 2->3, 2->2.
TRANSITIONS = torch.zeros(4, 4, dtype=torch.float64)
for a, b in [(1, 2), (2, 1), (1, 3), (2, 3), (2, 2)]:
    TRANSITIONS[a, b] += 1

# A_1 by hand: a_12 = 2 (1->2 and 2->1), a_13 = 1, a_23 = 1; the repeat 2->2 adds nothing.
A1 = torch.tensor(
    [[0, 0, 0, 0],
     [0, 0, 2, 1],
     [0, 2, 0, 1],
     [0, 1, 1, 0]],
    dtype=torch.float64,
)
# Row sums a_1 = 3, a_2 = 3, a_3 = 2, so Eq. 1 gives
#   A_2(1,2) = 2 / sqrt(4 * 4) = 1/2,  A_2(1,3) = A_2(2,3) = 1 / sqrt(4 * 3) = s.
s = 1 / math.sqrt(12)
A2 = torch.tensor(
    [[0, 0, 0, 0],
     [0, 0, 0.5, s],
     [0, 0.5, 0, s],
     [0, s, s, 0]],
    dtype=torch.float64,
)
# A_2^2 by hand (s^2 = 1/12):
#   (1,1) = 1/4 + 1/12 = 1/3, (1,2) = s*s = 1/12, (1,3) = 1/2 * s, (2,2) = 1/3, (2,3) = s/2, (3,3) = 2/12.
A2_SQ = torch.tensor(
    [[0, 0, 0, 0],
     [0, 1 / 3, 1 / 12, s / 2],
     [0, 1 / 12, 1 / 3, s / 2],
     [0, s / 2, s / 2, 1 / 6]],
    dtype=torch.float64,
)
I_REAL = torch.diag(torch.tensor([0.0, 1.0, 1.0, 1.0], dtype=torch.float64))  # identity on real categories


def test_adjacency_counts_symmetric_zero_diagonal() -> None:
    torch.testing.assert_close(category_adjacency(TRANSITIONS), A1, rtol=0, atol=0)


def test_normalisation_matches_eq1_by_hand() -> None:
    torch.testing.assert_close(normalized_adjacency(A1), A2, rtol=0, atol=1e-15)


def test_diffusion_by_hand() -> None:
    # hops = 1, alpha = 0.2: 0.2 I + 0.8 A_2
    torch.testing.assert_close(diffusion_matrix(A2, hops=1, alpha=0.2), 0.2 * I_REAL + 0.8 * A2, rtol=0, atol=1e-15)
    # hops = 2: 0.2 I + 0.2*0.8 A_2 + 0.8^2 A_2^2
    expected = 0.2 * I_REAL + 0.16 * A2 + 0.64 * A2_SQ
    torch.testing.assert_close(build_propagation(TRANSITIONS, hops=2, alpha=0.2), expected, rtol=0, atol=1e-15)
    # element check written out: entry (3, 3) = 0.2 + 0 + 0.64/6
    assert build_propagation(TRANSITIONS, hops=2, alpha=0.2)[3, 3].item() == pytest.approx(0.2 + 0.64 / 6, abs=1e-15)


@pytest.mark.parametrize("hops", [1, 2, 4, 7])
def test_diffusion_weights_sum_to_one(hops: int) -> None:
    # with A_2 = I every power is I, so the result is (sum_i theta_i) I = I
    torch.testing.assert_close(diffusion_matrix(I_REAL, hops=hops, alpha=0.3), I_REAL, rtol=0, atol=1e-12)


def test_gcn_layers_and_readout_by_hand() -> None:
    # H^(0) = one-hot rows, W^(1) = I: H^(1) = A H^(0) + H^(0) = A + I; mean readout = I + A/2
    enc = CategoryGraphEncoder(3, 4, layers=1, readout="mean").double()
    with torch.no_grad():
        enc.embedding.weight.copy_(torch.eye(4, dtype=torch.float64))
        enc.W[0].weight.copy_(torch.eye(4, dtype=torch.float64))
    P = build_propagation(TRANSITIONS, hops=1, alpha=0.2)
    enc.set_graph(P)
    eye = torch.eye(4, dtype=torch.float64)
    torch.testing.assert_close(enc(), eye + P / 2, rtol=0, atol=1e-15)
    enc.readout = "last"
    torch.testing.assert_close(enc(), eye + P, rtol=0, atol=1e-15)


def test_graph_errors() -> None:
    enc = CategoryGraphEncoder(3, 4)
    with pytest.raises(RuntimeError, match="category_transitions"):
        enc()
    with pytest.raises(ValueError, match="num_categories"):
        enc.set_graph(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="square"):
        category_adjacency(torch.zeros(3, 4))
