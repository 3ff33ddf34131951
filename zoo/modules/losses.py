"""Contrastive and distillation losses shared by several models."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def info_nce(
    a: Tensor,
    b: Tensor,
    tau: float,
    normalize: bool = True,
    exclude: Tensor | None = None,
    margin_deg: float = 0.0,
    margin_in_denominator: bool = True,
    offset: int = 0,
    excluded_logit: float = float("-inf"),
) -> Tensor:
    """InfoNCE with positives on the diagonal and in-group negatives.

    Args:
        a, b: ``[..., n, d]`` anchors and their positives (row i of ``a`` matches row i of
            ``b``); any leading dims are independent groups (e.g. one group per user).
        tau: temperature.
        normalize: cosine similarity (True) or raw dot product.
        exclude: ``[..., n, n]`` bool, True for off-diagonal pairs that must not act as
            negatives (e.g. sequences with the same target: HM4SR's false negatives).
        margin_deg: additive angular margin on the positive pair, ``cos(min(theta + m, pi))``
            (ArcFace; HPCL4SR Eq. 16).  Requires ``normalize=True``.
        margin_in_denominator: with a margin, the denominator holds the margined positive
            (ArcFace, HPCL4SR Eq. 15; default) or the plain one (HPCL4SR Eq. 17:
            ``sum_{j != i}`` over the un-margined similarities).
        offset: ``b`` holds more rows than ``a`` (``[..., m, d]``, e.g. every process's rows under
            DDP, :func:`zoo.modules.distributed.gather_rows`) and row i of ``a`` matches row
            ``offset + i`` of ``b``; ``exclude`` is then ``[..., n, m]``.
        excluded_logit: what an excluded pair's logit becomes: ``-inf`` (no term; default) or a
            constant (UniSRec's and HM4SR's code: 0, still in the denominator).
    Returns:
        Scalar mean loss over all anchors.
    """
    if normalize:
        a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    sim = a @ b.transpose(-1, -2)  # [..., n, m]
    n, n_b = sim.shape[-2:]
    rows, cols = torch.arange(n, device=sim.device), torch.arange(n_b, device=sim.device)
    eye = cols[None, :] == rows[:, None] + offset  # [n, m]: the positive pairs
    plain = sim
    if margin_deg:
        if not normalize:
            raise ValueError("an angular margin needs cosine similarities (normalize=True)")
        m = math.radians(margin_deg)
        # at least float32: in bf16 the clamp rounds to 1 and acos' gradient is -inf (NaN weights)
        cos = sim.to(torch.promote_types(sim.dtype, torch.float32)).clamp(-1 + 1e-7, 1 - 1e-7)
        # theta + m capped at pi (ArcFace's guard): past it cos would rise again, rewarding a positive
        # pair for moving further apart
        sim = torch.where(eye, torch.cos((torch.acos(cos) + m).clamp(max=math.pi)), sim)
    logits = sim / tau
    if exclude is not None:
        logits = logits.masked_fill(exclude & ~eye, excluded_logit)
    if margin_deg and not margin_in_denominator:
        # Eq. 17: -log( e^{cos(theta_ii* + m)/tau} / sum_{j != i} e^{cos(theta_ij)/tau} )
        denominator = torch.where(eye, plain / tau, logits)  # [..., n, m], positive un-margined
        positive = torch.where(eye, logits, 0.0).sum(-1)  # [..., n]
        return (torch.logsumexp(denominator, -1) - positive).mean()
    labels = (rows + offset).expand(logits.shape[:-1])  # [..., n]
    return F.cross_entropy(logits.reshape(-1, n_b), labels.reshape(-1))


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return -grad


def grad_reverse(x: Tensor) -> Tensor:
    """Identity forward, negated gradient backward (Ganin & Lempitsky's gradient reversal;
    the MDMI category classifier HPCL4SR's ``class_grad_reverse`` reproduces)."""
    return _GradReverse.apply(x)


def distillation_kl(student_logits: Tensor, teacher_logits: Tensor, T: float, detach_teacher: bool = True) -> Tensor:
    """Knowledge distillation ``T^2 * KL(softmax(teacher/T) || softmax(student/T))``.

    The teacher is detached (it is the distillation target), so no gradient reaches it, unless
    ``detach_teacher=False`` (TiMiRec's "w/o stopgrad" as its code would run it).
    ``student_logits``/``teacher_logits``: ``[B, K]``; returns the batch mean.
    """
    p = F.softmax((teacher_logits.detach() if detach_teacher else teacher_logits) / T, dim=-1)
    log_q = F.log_softmax(student_logits / T, dim=-1)
    return F.kl_div(log_q, p, reduction="batchmean") * T * T
