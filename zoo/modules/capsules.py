"""Behaviour-to-interest dynamic routing (Sabour et al. 2017), shared by every capsule model.

One function serves all of the zoo's capsule networks:

* ComiRec-DR (HPCL4SR's low-level interests, the ComiRec-DR baseline): per-capsule prediction
  vectors ``u_hat [B, K, L, d]``, zero initial logits, intermediate iterations on a detached
  ``u_hat`` (ComiRec's ``stop_grad``), softmax over interests (or over positions, the PyTorch
  ports' variant).
* MIND: shared bilinear map, ``u_hat [B, L, d]``, random initial logits.
* MIRACLE / HORAE sparse interest capsules: shared features ``q [B, L, d]``, initial logits
  ``b0 = s`` (item-capsule similarity), a per-user active-capsule mask, per-item attention
  weights ``o_i`` (MIRACLE Eqs. 10-14, HORAE Eqs. 18-22), no detaching.

Logits and coupling coefficients are laid out ``[B, K, L]`` (capsule, item).
"""

from __future__ import annotations

import torch
from torch import Tensor

NEG_INF = -1e9


def squash(z: Tensor, eps: float = 1e-9) -> Tensor:
    """Squash non-linearity: ``|z|^2 / (1 + |z|^2) * z / |z|`` over the last dimension."""
    n2 = (z * z).sum(-1, keepdim=True)
    return z * n2 / (1.0 + n2) / torch.sqrt(n2 + eps)


def dynamic_routing(
    u_hat: Tensor,
    pad_mask: Tensor,
    iters: int = 3,
    init_logits: Tensor | None = None,
    capsule_mask: Tensor | None = None,
    item_weights: Tensor | None = None,
    softmax_over: str = "interest",
    detach_intermediate: bool = True,
    num_capsules: int | None = None,
    agreement_vectors: Tensor | None = None,
) -> Tensor:
    """Route item vectors to K interest capsules.

    Args:
        u_hat: prediction vectors, ``[B, K, L, d]`` (one per capsule) or ``[B, L, d]`` (shared).
        pad_mask: ``[B, L]`` bool, True where the position holds a real item.
        iters: routing iterations r.
        init_logits: ``[B, K, L]`` initial logits b^(0) (default zeros).
        capsule_mask: ``[B, K]`` bool, True for capsules that may receive items (MIRACLE's
            activated set I_u); the others get logit -1e9.
        item_weights: ``[B, L]`` per-item weights multiplied into the coupling (MIRACLE's o_i).
        softmax_over: ``"interest"`` (each item spreads over capsules; Sabour, ComiRec) or
            ``"position"`` (each capsule spreads over items; the PyTorch ComiRec ports).
        detach_intermediate: route iterations 1..r-1 on a detached ``u_hat`` (ComiRec).
        num_capsules: K, required when ``u_hat`` is shared and ``init_logits`` is None.
        agreement_vectors: ``[B, L, d]`` vectors of the agreement update ``b += <x_i, v_k>``
            (shared ``u_hat`` only; default ``u_hat`` itself; MIRACLE Eq. 14 as printed uses h_i).
    Returns:
        ``[B, K, d]`` interest capsules (squashed).
    """
    if softmax_over not in ("interest", "position"):
        raise ValueError(f"softmax_over must be 'interest' or 'position', got {softmax_over!r}")
    shared = u_hat.dim() == 3
    B, L = pad_mask.shape
    if init_logits is not None:
        b = init_logits
    else:
        K = u_hat.shape[1] if not shared else num_capsules
        if K is None:
            raise ValueError("dynamic_routing: num_capsules is required for shared u_hat without init_logits")
        b = u_hat.new_zeros(B, K, L)
    pad = ~pad_mask[:, None, :]  # [B, 1, L]
    v = None
    for t in range(iters):
        last = t == iters - 1
        logits = b if capsule_mask is None else b.masked_fill(~capsule_mask[:, :, None], NEG_INF)
        if softmax_over == "interest":
            c = torch.softmax(logits, dim=1)  # [B, K, L]
        else:
            c = torch.softmax(logits.masked_fill(pad, NEG_INF), dim=2)
        c = c.masked_fill(pad, 0.0)  # pads contribute nothing
        if item_weights is not None:
            c = c * item_weights[:, None, :]
        uh = u_hat if (last or not detach_intermediate) else u_hat.detach()
        if shared:
            v = squash(torch.einsum("bkl,bld->bkd", c, uh))  # [B, K, d]
            x = uh if agreement_vectors is None else agreement_vectors  # [B, L, d]
            agreement = torch.einsum("bld,bkd->bkl", x, v) if not last else None
        else:
            v = squash(torch.einsum("bkl,bkld->bkd", c, uh))  # [B, K, d]
            agreement = torch.einsum("bkld,bkd->bkl", uh, v) if not last else None
        if agreement is not None:
            b = b + agreement  # [B, K, L]
    assert v is not None, "iters must be >= 1"
    return v
