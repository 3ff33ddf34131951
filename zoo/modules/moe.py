"""Mixture-of-experts pieces: UniSRec's parametric-whitening MoE adaptor (MIRACLE / HORAE Eqs. 2-4).

The adaptor maps a frozen text feature ``t_i in R^{d_b}`` (BERT/MiniLM ``[CLS]`` or mean
pooled) into the model space ``x_i in R^{d_n}``:

    x_i = sum_k g_k * Expert_k(t_i)                                   (Eq. 2)
    g   = softmax(t_i W_1 + b_1)                                      (Eq. 3)
    Expert_k(t_i) = (t_i - b_2^k) W_2^k,  b_2^k in R^{d_b}             (Eq. 4; MIRACLE prints
                                                                       R^{d_n}, a typo HORAE fixes)

Official code (UniSRec ``MoEAdaptorLayer`` / ``PWLayer``, copied by MIRACLE and HORAE):
* each expert is ``Linear(d_b -> d_n, bias=False)(Dropout(t) - b_2^k)``, ``b_2^k`` zero-initialised;
* the gate has no bias (``gate_bias=False``; the paper's ``b_1`` is ``gate_bias=True``), its
  weight ``W_1`` and the noise weight are zero-initialised, so experts start equally weighted;
* in training only, Gaussian noise ``randn * (softplus(t W_noise) + 0.01)`` is added to the gate
  logits (Shazeer et al. 2017), then a DENSE softmax over all experts.

:class:`NoisySoftmaxGate` and :class:`DenseMoE` are the generic pieces (any list of experts with
a shared input); :class:`MoEAdaptor` is the whitening adaptor built from them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.modules.dropout import Dropout


class NoisySoftmaxGate(nn.Module):
    """Dense softmax gate over G experts with optional training-time noise.

    Args:
        in_dim: input feature size.  n_experts: G.
        noisy: add ``randn * (softplus(x W_noise) + noise_floor)`` to the logits while training.
        bias: learn a bias ``b_1`` (MIRACLE/HORAE Eq. 3); the official code has none.
    """

    def __init__(self, in_dim: int, n_experts: int, noisy: bool = True, bias: bool = False, noise_floor: float = 0.01) -> None:
        super().__init__()
        self.noisy, self.noise_floor = noisy, noise_floor
        self.w_gate = nn.Parameter(torch.zeros(in_dim, n_experts))  # W_1, zero-initialised (code)
        self.w_noise = nn.Parameter(torch.zeros(in_dim, n_experts)) if noisy else None
        self.b_gate = nn.Parameter(torch.zeros(n_experts)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        """x ``[..., in_dim]`` -> gate weights ``[..., G]`` (rows sum to 1)."""
        logits = x @ self.w_gate  # [..., G]
        if self.b_gate is not None:
            logits = logits + self.b_gate
        if self.noisy and self.training:
            std = F.softplus(x @ self.w_noise) + self.noise_floor  # [..., G]
            logits = logits + torch.randn_like(logits) * std
        return torch.softmax(logits, dim=-1)


class DenseMoE(nn.Module):
    """``sum_k g_k(x) * expert_k(x)`` over a list of experts sharing the input (dense gating)."""

    def __init__(self, experts: list[nn.Module], gate: NoisySoftmaxGate) -> None:
        super().__init__()
        self.experts = nn.ModuleList(experts)
        self.gate = gate

    def forward(self, x: Tensor) -> Tensor:
        """x ``[..., in_dim]`` -> ``[..., out_dim]``."""
        g = self.gate(x)  # [..., G]
        outs = torch.stack([expert(x) for expert in self.experts], dim=-2)  # [..., G, out_dim]
        return (g.unsqueeze(-1) * outs).sum(-2)


class PWLayer(nn.Module):
    """Parametric whitening expert (UniSRec): ``(Dropout(t) - b) W``, Eq. 4."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.3) -> None:
        super().__init__()
        self.dropout = Dropout(dropout)
        self.bias = nn.Parameter(torch.zeros(in_dim))  # b_2^k in R^{d_b}
        self.lin = nn.Linear(in_dim, out_dim, bias=False)  # W_2^k
        nn.init.normal_(self.lin.weight, 0.0, 0.02)

    def forward(self, t: Tensor) -> Tensor:
        return self.lin(self.dropout(t) - self.bias)  # [..., out_dim]


class MoEAdaptor(DenseMoE):
    """The MoE adaptor of UniSRec / MIRACLE / HORAE: G whitening experts, noisy dense gate.

    Args:
        in_dim: d_b, the frozen text feature size.  out_dim: d_n.
        n_experts: G (8 in the papers).  dropout: input dropout inside each expert (0.3, code).
        noisy_gating: training-time gate noise (code).  gate_bias: the paper's b_1 (Eq. 3).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        n_experts: int = 8,
        dropout: float = 0.3,
        noisy_gating: bool = True,
        gate_bias: bool = False,
    ) -> None:
        experts = [PWLayer(in_dim, out_dim, dropout) for _ in range(n_experts)]
        super().__init__(experts, NoisySoftmaxGate(in_dim, n_experts, noisy=noisy_gating, bias=gate_bias))

    def forward(self, t: Tensor) -> Tensor:
        """t ``[..., in_dim]`` -> ``[..., out_dim]``: :class:`DenseMoE` over :class:`PWLayer`, faster.

        The same function computed as ``sum_k g_k (Dropout_k(t) W_k^T - b_k W_k^T)``: the expert
        bias is folded into a ``[out_dim]`` constant per expert, so the backward never forms the
        ``[..., in_dim]`` input gradient that ``(Dropout(t) - b) W`` needs for ``b`` (t is a
        frozen table; with the three elementwise passes of the mask, a third of HORAE's
        pre-training step).  The masks are drawn expert by expert with the same calls as
        :class:`zoo.modules.dropout.Dropout`, so the random stream and the losses are unchanged
        (``tests/test_modules.py`` checks it against the per-expert form).
        """
        g = self.gate(t)  # [..., G] (draws the gate noise first, as DenseMoE)
        drop = self.experts[0].dropout
        cpu_mask = self.training and drop.p > 0.0 and t.device.type == "cpu" and drop.p < 1.0 and not drop.inplace
        t_scaled = t * (1.0 / (1.0 - drop.p)) if cpu_mask else t  # [..., in] kept entries of every mask
        y = None
        for k, expert in enumerate(self.experts):
            if cpu_mask:
                keep = torch.rand_like(t).ge_(drop.p)  # [..., in] 1.0 / 0.0, the draw of Dropout(t)
                td = keep * t_scaled if t.requires_grad else keep.mul_(t_scaled)  # = Dropout(t)
            else:
                td = expert.dropout(t)  # identity in eval; F.dropout on CUDA
            w = expert.lin.weight  # [out, in]
            out = F.linear(td, w) - F.linear(expert.bias, w)  # [..., out]
            y = g[..., k : k + 1] * out if y is None else y + g[..., k : k + 1] * out
        assert y is not None
        return y
