"""CPU stand-in for the one ``torch_scatter`` function the authors' MIRACLE/HORAE code calls.

``scatter_add(src, index, dim=-1, out=None, dim_size=None)``: sums ``src`` into ``out`` (or zeros)
at ``index`` along ``dim``, through ``Tensor.scatter_add_`` (torch_scatter broadcasts ``index``
to ``src``; the authors' calls pass equal shapes).
"""

from __future__ import annotations

import torch


def scatter_add(src: torch.Tensor, index: torch.Tensor, dim: int = -1, out: torch.Tensor | None = None,
                dim_size: int | None = None) -> torch.Tensor:
    dim = dim % src.dim()
    if index.shape != src.shape:
        index = index.expand_as(src)
    if out is None:
        size = list(src.shape)
        size[dim] = int(index.max()) + 1 if dim_size is None else dim_size
        out = torch.zeros(size, dtype=src.dtype, device=src.device)
    return out.scatter_add_(dim, index, src)
