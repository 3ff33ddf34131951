"""Next-item losses for models that read out ONE user vector per training example.

``NextItemLoss`` gathers the three objectives the multi-interest papers use after their
readout (ComiRec/MIND/HPCL4SR: the best-matching interest; TiMiRec: the greedy interest or the
predicted aggregate):

* ``"sampled_softmax"`` (HPCL4SR Eq. 19, Jean et al.; ComiRec/REMI): one set of ``n_neg``
  negatives shared by the whole batch, drawn with replacement from ``"uniform"`` (REMI) or
  ``"popularity"`` (training counts; ComiRec's TF log-uniform sampler over frequency-ranked ids
  is a Zipf approximation of it).  Logits are corrected by ``-log(n_neg * q(j))`` (logQ, the
  expected count, as ``tf.nn.sampled_softmax_loss``) for the target and every negative, and a
  negative equal to the row's target (an accidental hit) is masked out.
* ``"full_softmax"``: cross-entropy over all N items (MDMI, the papers' SASRec tables).
* ``"bpr"`` (TiMiRec Eq. 10): ``-log sigma(<v, i+> - <v, i->)`` with one uniform negative per
  example that is neither the target nor in the example's history window (``exclude="window"``),
  or outside the user's whole training history (``exclude="history"``, ReChorus); ReChorus
  re-draws it every epoch, here every step (:mod:`zoo.modules.negatives`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.modules.negatives import TrainNegatives, one_negative_loss

LOSSES = ("sampled_softmax", "full_softmax", "bpr")


class NextItemLoss(nn.Module):
    """L_rec for one user vector per example against an item table.

    Args:
        num_items: N (ids 1..N; 0 is padding and never a candidate).
        loss: ``"sampled_softmax"``, ``"full_softmax"`` or ``"bpr"``.
        n_neg: shared negatives per batch for the sampled softmax (REMI/ComiRec: 1280).
        sampler: ``"uniform"`` or ``"popularity"`` (needs :meth:`set_popularity`).
        logq_correction: subtract ``log(n_neg * q(j))`` from each sampled logit.
        mask_accidental_hits: drop negatives equal to the row's target.
        replacement: sample negatives with replacement (default); without replacement with
            ``n_neg >= N`` and uniform sampling the loss equals the full softmax (tests).
        exclude: what a BPR negative avoids, ``"window"`` (the target and the history window)
            or ``"history"`` (the user's whole training history, ReChorus; needs
            :meth:`set_train_history` and the batch's user ids).
    """

    def __init__(
        self,
        num_items: int,
        loss: str = "sampled_softmax",
        n_neg: int = 1280,
        sampler: str = "uniform",
        logq_correction: bool = True,
        mask_accidental_hits: bool = True,
        replacement: bool = True,
        exclude: str = "window",
    ) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        self.train_negatives = TrainNegatives(num_items, exclude, allowed=("window", "history"))  # BPR's negative
        if exclude == "history" and loss != "bpr":
            raise ValueError(f"train_negatives_exclude='history' applies to loss='bpr' (ReChorus's BPR), not loss={loss!r}")
        if sampler not in ("uniform", "popularity"):
            raise ValueError(f"neg_sampler must be 'uniform' or 'popularity', got {sampler!r}")
        if n_neg < 1:
            raise ValueError(f"n_neg must be >= 1, got {n_neg}")
        self.num_items, self.loss, self.n_neg, self.sampler = num_items, loss, n_neg, sampler
        self.logq_correction, self.mask_accidental_hits, self.replacement = logq_correction, mask_accidental_hits, replacement
        self.register_buffer("probs", None, persistent=False)  # [N+1] sampling distribution (popularity)

    def set_popularity(self, counts: Tensor) -> None:
        """Training counts ``[N+1]`` -> the popularity sampling distribution (pad excluded; +1 smoothing)."""
        if counts.shape[0] != self.num_items + 1:
            raise ValueError(f"popularity has {counts.shape[0]} rows, expected num_items + 1 = {self.num_items + 1}")
        p = counts.float().clamp(min=0) + 1.0
        p[0] = 0.0
        self.probs = p / p.sum()

    # ------------------------------------------------------------------ sampling
    def sample(self, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """n shared negatives ``[n]`` (ids 1..N) and their log expected counts ``[n]``."""
        N = self.num_items
        if self.sampler == "popularity":
            if self.probs is None:
                raise RuntimeError("neg_sampler='popularity' needs the datamodule's 'popularity' side info")
            neg = torch.multinomial(self.probs, n, replacement=self.replacement)
            log_q = self.probs[neg].log()
        else:
            if self.replacement:
                neg = torch.randint(1, N + 1, (n,), device=device)
            else:
                neg = torch.randperm(N, device=device)[: min(n, N)] + 1
            log_q = torch.full((neg.shape[0],), -math.log(N), device=device)
        return neg, log_q + math.log(n)

    def set_train_history(self, info: dict[str, Tensor], device: torch.device | str = "cpu") -> None:
        """Attach the datamodule's ``train_history_ptr`` / ``train_history_items`` (``exclude="history"``)."""
        self.train_negatives.attach(info, device)

    # ------------------------------------------------------------------ loss
    def forward(
        self, user: Tensor, target: Tensor, item_emb: Tensor, history: Tensor | None = None, users: Tensor | None = None
    ) -> Tensor:
        """user ``[B, d]``, target ``[B]``, item_emb ``[N+1, d]``, history ``[B, L]``, users ``[B]``
        (user ids, for ``exclude="history"``) -> scalar mean loss."""
        if self.loss == "full_softmax":
            logits = user @ item_emb.T  # [B, N+1]
            logits = logits.masked_fill(torch.arange(logits.shape[1], device=user.device) == 0, float("-inf"))
            return F.cross_entropy(logits, target)
        if self.loss == "bpr":
            return one_negative_loss("bpr", self.train_negatives, user, target, item_emb, history, users)
        pos = (user * item_emb[target]).sum(-1)  # [B]
        neg, log_count = self.sample(self.n_neg, user.device)  # [n], [n]
        neg_logits = user @ item_emb[neg].T  # [B, n]
        if self.logq_correction:
            if self.sampler == "popularity":
                pos = pos - (self.probs[target].log() + math.log(self.n_neg))
            else:
                pos = pos - log_count[0]
            neg_logits = neg_logits - log_count
        if self.mask_accidental_hits:
            neg_logits = neg_logits.masked_fill(neg[None, :] == target[:, None], float("-inf"))
        logits = torch.cat([pos[:, None], neg_logits], 1)  # [B, 1+n]
        return F.cross_entropy(logits, torch.zeros_like(target))
