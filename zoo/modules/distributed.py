"""Across processes (DDP): the batch's rows of every process, for losses whose negatives are the
other rows of the batch."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def share_of_mean(loss: Tensor, n_own: int, n_all: int) -> Tensor:
    """This process's mean ``loss`` over its own ``n_own`` rows, as its share of the mean over all
    ``n_all`` rows of every process, given that DDP averages the processes' gradients: scaled by
    ``n_own * world / n_all``; unchanged in one process or with equal shares."""
    world = dist.get_world_size() if _distributed() else 1
    share = n_own * world / n_all if n_all else 1.0
    return loss if share == 1.0 else loss * share


def gather_rows(x: Tensor) -> tuple[Tensor, int]:
    """Every process's rows of ``x [n, ...]``, concatenated in rank order, and the offset of this
    process's own rows in them; ``(x, 0)`` in a single process.

    Gradients flow back to each process's own rows (``torch.distributed.nn``'s all-gather, whose
    backward sums what every process's loss sends to a row).  A loss that averages over its own
    rows against the gathered ones, under DDP's gradient averaging, then has exactly the gradient
    of one process training on the concatenated batch.  Processes may hold different numbers of
    rows (the epoch's last batch): the rows are padded for the exchange and the padding dropped.
    """
    if not _distributed():
        return x, 0
    world, rank = dist.get_world_size(), dist.get_rank()
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes_t = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes_t, n)
    sizes = [int(s) for s in sizes_t]
    pad = max(sizes) - x.shape[0]
    padded = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))]) if pad else x
    if x.requires_grad:
        from torch.distributed.nn.functional import all_gather

        parts = list(all_gather(padded))
    else:
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:s] for p, s in zip(parts, sizes)]), sum(sizes[:rank])
