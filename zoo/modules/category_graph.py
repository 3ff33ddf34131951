"""HPCL4SR's global category graph (Eqs. 1-4), built once from training sequences.

1. ``category_adjacency``: A_1, counts of ADJACENT category pairs over the training users'
   sequences, made symmetric (a pair (c_t, c_{t+1}) counts for both (i, j) and (j, i); MDMI
   main), with a zero diagonal (consecutive same-category items make no self-loop) and the pad
   category 0 out of the graph.  Input: the datamodule's directed ``category_transitions``.
2. ``normalized_adjacency`` (Eq. 1): ``A_2(i, j) = a_ij / sqrt((a_i + 1)(a_j + 1))`` with
   ``a_i = sum_j a_ij``.
3. ``diffusion_matrix`` (Eq. 2, MAGNA-style multi-hop attention diffusion): the truncated
   personalised-PageRank series ``sum_{i<hops} alpha(1-alpha)^i A_2^i + (1-alpha)^hops A_2^hops``
   (theta_i decreasing, summing to one; exactly MDMI's ``Z <- (1-alpha) A_2 Z + alpha Z_0``
   iteration without dropout).  The identity term only covers real categories 1..C.
4. :class:`CategoryGraphEncoder` (Eqs. 3-4): residual GCN layers
   ``H^(l) = W^(l) (A H^(l-1)) + H^(l-1)`` (bias-free, no activation, as printed) and the
   read-out ``H_hat = mean_{l=0..L} H^(l)`` (Eq. 4 without its typo'd minus sign; ``"last"``:
   MDMI's last layer).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def category_adjacency(transitions: Tensor) -> Tensor:
    """Directed counts ``[C+1, C+1]`` (cat(s_t) -> cat(s_{t+1})) -> symmetric A_1, zero diagonal."""
    if transitions.dim() != 2 or transitions.shape[0] != transitions.shape[1]:
        raise ValueError(f"category_transitions must be a square [C+1, C+1] matrix, got {tuple(transitions.shape)}")
    t = transitions if transitions.is_floating_point() else transitions.float()
    a = t + t.T
    a.fill_diagonal_(0.0)
    a[0, :] = 0.0
    a[:, 0] = 0.0
    return a


def normalized_adjacency(a1: Tensor) -> Tensor:
    """Eq. 1: ``A_2(i, j) = a_ij / sqrt((a_i + 1)(a_j + 1))``."""
    deg = a1.sum(1) + 1.0  # [C+1]
    inv = deg.rsqrt()
    return inv[:, None] * a1 * inv[None, :]


def diffusion_matrix(a2: Tensor, hops: int = 4, alpha: float = 0.2) -> Tensor:
    """Eq. 2 truncated at ``hops``: theta_i = alpha(1-alpha)^i for i < hops, (1-alpha)^hops last."""
    if hops < 1:
        raise ValueError(f"graph_hops must be >= 1, got {hops}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"graph_alpha must be in (0, 1), got {alpha}")
    eye = torch.eye(a2.shape[0], dtype=a2.dtype, device=a2.device)
    eye[0, 0] = 0.0  # the pad category stays out of the graph
    power, out = eye, torch.zeros_like(a2)
    for i in range(hops):
        out = out + alpha * (1 - alpha) ** i * power
        power = power @ a2  # A_2^{i+1}
    return out + (1 - alpha) ** hops * power


def build_propagation(transitions: Tensor, hops: int = 4, alpha: float = 0.2) -> Tensor:
    """Transitions ``[C+1, C+1]`` -> the diffused, normalised graph A used by Eq. 3."""
    return diffusion_matrix(normalized_adjacency(category_adjacency(transitions)), hops, alpha)


class CategoryGraphEncoder(nn.Module):
    """Residual GCN over the global category graph (Eqs. 3-4).

    Args:
        num_categories: C (ids 1..C; 0 = pad / no category).
        d: embedding size.  layers: L_g GCN layers (MDMI: 3).
        readout: ``"mean"`` over H^(0..L) (Eq. 4) or ``"last"`` (MDMI).
    The propagation matrix comes from data (:meth:`set_graph`) and is a non-persistent buffer.
    """

    def __init__(self, num_categories: int, d: int, layers: int = 3, readout: str = "mean") -> None:
        super().__init__()
        if readout not in ("mean", "last"):
            raise ValueError(f"graph_readout must be 'mean' or 'last', got {readout!r}")
        self.readout = readout
        self.embedding = nn.Embedding(num_categories + 1, d)  # H^(0)
        nn.init.kaiming_normal_(self.embedding.weight)
        self.W = nn.ModuleList(nn.Linear(d, d, bias=False) for _ in range(layers))
        self.register_buffer("propagation", None, persistent=False)  # [C+1, C+1]

    def set_graph(self, propagation: Tensor) -> None:
        n = self.embedding.num_embeddings
        if propagation.shape != (n, n):
            raise ValueError(f"category graph is {tuple(propagation.shape)}, expected ({n}, {n}) = num_categories + 1")
        self.propagation = propagation.to(self.embedding.weight)

    def forward(self) -> Tensor:
        """-> H_hat ``[C+1, d]``."""
        if self.propagation is None:
            raise RuntimeError("the category graph is not set: attach the datamodule's 'category_transitions'")
        h = self.embedding.weight  # [C+1, d]
        layers = [h]
        for W in self.W:
            h = W(self.propagation @ h) + h  # Eq. 3
            layers.append(h)
        return torch.stack(layers).mean(0) if self.readout == "mean" else h  # Eq. 4
