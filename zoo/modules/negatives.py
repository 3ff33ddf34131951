"""Uniform training negatives for one-negative objectives (BPR, SASRec's BCE).

Which items a negative must avoid is the switch ``train_negatives_exclude`` of the models that
draw them (SASRec, ComiRec, TiMiRec, MIND, HPCL4SR):

* ``"none"``: any real item 1..N (the original SASRec's BCE, as the zoo's SASRec draws it).
* ``"window"``: not the target and not an item of the example's history window ``[B, L]``
  (:func:`window_negatives`, a few rounds of vectorised rejection).
* ``"history"``: not an item of the user's WHOLE training history, ReChorus's
  ``train_clicked_set`` (``src/models/BaseModel.py``, ``GeneralModel.Dataset.actions_before_epoch``).
  :class:`HistoryNegatives` draws exactly uniformly from each user's unseen items, with no
  rejection loop: the r-th unseen item (0-based) of a user whose sorted training items are
  ``s_0 < s_1 < ...`` is ``r + 1 + #{j : s_j - 1 - j <= r}`` (``s_j - 1 - j`` counts the unseen
  items below ``s_j``), and the count is one ``searchsorted`` over all users' keys at once.
  ReChorus draws the negatives once per epoch per example; here every step (same distribution).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

EXCLUDE = ("none", "window", "history")


def check_exclude(value: str, allowed: tuple[str, ...] = EXCLUDE) -> str:
    if value not in allowed:
        raise ValueError(f"train_negatives_exclude must be one of {allowed}, got {value!r}")
    return value


def _either(names: tuple[str, ...]) -> str:
    quoted = [repr(n) for n in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def check_loss(loss: str, one_negative: tuple[str, ...], exclude: str) -> str:
    """A model's ``loss``: ``"ce"`` (softmax over all items, no negatives) or one of its
    ``one_negative`` losses; ``train_negatives_exclude`` other than ``"none"`` needs the latter."""
    if loss not in ("ce", *one_negative):
        raise ValueError(f"loss must be {_either(('ce', *one_negative))}, got {loss!r}")
    if loss == "ce" and exclude != "none":
        raise ValueError(f"train_negatives_exclude applies to loss={_either(one_negative)}; loss='ce' samples no negatives")
    return loss


def window_negatives(num_items: int, target: Tensor, history: Tensor | None, rounds: int = 10) -> Tensor:
    """One uniform negative per row ``[B]`` that avoids the target and the row's ``history [B, L]``
    (vectorised rejection; after ``rounds`` re-draws a rare remaining clash is kept)."""
    neg = torch.randint(1, num_items + 1, target.shape, device=target.device)  # [B]
    for _ in range(rounds):
        bad = neg == target
        if history is not None:
            bad |= (history == neg[:, None]).any(1)
        if not bad.any():
            break
        neg = torch.where(bad, torch.randint_like(neg, 1, num_items + 1), neg)
    return neg


class HistoryNegatives(nn.Module):
    """Uniform negatives outside each user's whole training history (ReChorus ``train_clicked_set``).

    :meth:`set_history` takes the datamodule's side info ``train_history_ptr [U+1]`` /
    ``train_history_items [nnz]`` (CSR: user u's distinct training items, ascending, at
    ``items[ptr[u]:ptr[u+1]]``).  Buffers are non-persistent: checkpoints do not change, and the
    history is attached again from the datamodule at every ``setup``.
    """

    def __init__(self, num_items: int) -> None:
        super().__init__()
        self.num_items = int(num_items)
        self.register_buffer("keys", None, persistent=False)  # [nnz] u * (N+1) + (s_j - 1 - j), ascending
        self.register_buffer("ptr", None, persistent=False)  # [U+1]

    @property
    def ready(self) -> bool:
        return self.keys is not None

    def set_history(self, ptr: Tensor, items: Tensor) -> None:
        ptr, items = ptr.long().flatten(), items.long().flatten()
        counts = ptr[1:] - ptr[:-1]  # [U]
        if ptr.numel() < 2 or int(ptr[0]) != 0 or int(ptr[-1]) != items.numel() or bool((counts < 0).any()):
            raise ValueError("train_history_ptr must be a CSR pointer [U+1] from 0 to len(train_history_items)")
        N1 = self.num_items + 1
        if items.numel() and (int(items.min()) < 1 or int(items.max()) > self.num_items):
            raise ValueError(f"train_history_items must be item ids in 1..{self.num_items}")
        owner = torch.repeat_interleave(torch.arange(counts.numel(), device=ptr.device), counts)  # [nnz]
        rank = torch.arange(items.numel(), device=ptr.device) - ptr[:-1][owner]  # j within the user
        unseen_below = items - 1 - rank  # [nnz], non-decreasing within a user iff items ascend strictly
        keys = owner * N1 + unseen_below
        if keys.numel() > 1 and bool((keys[1:] < keys[:-1]).any()):
            raise ValueError("train_history_items must be distinct and ascending within each user")
        self.keys, self.ptr = keys, ptr

    def forward(self, user: Tensor) -> Tensor:
        """user ids ``[M]`` -> one negative per row ``[M]``, uniform over the user's unseen items."""
        if self.keys is None:
            raise RuntimeError(
                "train_negatives_exclude='history' needs the datamodule's 'train_history_ptr' / "
                "'train_history_items' side info (attach_side_info)"
            )
        user = user.long().to(self.ptr.device)
        if user.numel() and int(user.max()) >= self.ptr.numel() - 1:
            raise ValueError(f"user id beyond the {self.ptr.numel() - 1} users of the attached training history")
        lo = self.ptr[user]  # [M]
        free = self.num_items - (self.ptr[user + 1] - lo)  # [M] unseen items per row
        if bool((free < 1).any()):
            raise ValueError("train_negatives_exclude='history': a user has interacted with every item; no negative exists")
        r = (torch.rand(user.shape, device=user.device) * free).long().clamp_(max=free - 1)  # [M] 0-based unseen rank
        below = torch.searchsorted(self.keys, user * (self.num_items + 1) + r, right=True) - lo  # [M]
        return r + 1 + below


class TrainNegatives(nn.Module):
    """One training negative per target, avoiding what ``exclude`` names (``"none"`` / ``"window"``
    / ``"history"``, see the module docstring): the one sampler of every BPR/BCE objective
    (SASRec's ``bce``/``bpr``, :class:`zoo.modules.sampled_softmax.NextItemLoss`'s ``bpr``).

    :meth:`attach` takes the datamodule's side info (only ``"history"`` reads it).
    """

    def __init__(self, num_items: int, exclude: str = "window", allowed: tuple[str, ...] = EXCLUDE) -> None:
        super().__init__()
        self.num_items = int(num_items)
        self.exclude = check_exclude(exclude, allowed)
        self.history = HistoryNegatives(num_items) if exclude == "history" else None

    def attach(self, info: dict[str, Tensor], device: torch.device | str = "cpu") -> None:
        """The datamodule's ``train_history_ptr`` / ``train_history_items`` (``exclude="history"``)."""
        if self.history is None:
            return
        if "train_history_ptr" not in info or "train_history_items" not in info:
            raise ValueError("train_negatives_exclude='history' needs the datamodule's 'train_history_ptr' / "
                             "'train_history_items' side info")
        self.history.set_history(info["train_history_ptr"].to(device), info["train_history_items"].to(device))

    def forward(self, target: Tensor, window: Tensor | None, user: Tensor | None = None, rounds: int = 10) -> Tensor:
        """target ``[M]``, window ``[M, L]`` (each row's input items), user ``[M]`` (ids; needed by
        ``"history"``) -> one negative id per row ``[M]`` on the target's device."""
        if self.history is not None:
            if user is None:
                raise ValueError("train_negatives_exclude='history' needs the batch's 'user' ids")
            return self.history(user).to(target.device)
        if self.exclude == "window":
            return window_negatives(self.num_items, target, window, rounds)
        return torch.randint(1, self.num_items + 1, target.shape, device=target.device)  # [M]


ONE_NEGATIVE_LOSSES = ("bpr", "bce")


def one_negative_loss(
    kind: str, negatives: TrainNegatives, user: Tensor, target: Tensor, item_emb: Tensor,
    item_seq: Tensor | None = None, users: Tensor | None = None, row: Tensor | None = None,
) -> Tensor:
    """The one-negative objectives, mean over rows, with the negative from ``negatives``:

    * ``"bpr"`` (ReChorus ``GeneralModel.loss``, TiMiRec Eq. 10): ``-log sigma(s+ - s-)``;
    * ``"bce"`` (the original SASRec): ``-log sigma(s+) - log(1 - sigma(s-))``;

    with ``s = <user, item_emb[i]>``.  user ``[M, d]``, target ``[M]``, item_emb ``[N+1, d]``;
    item_seq ``[B, L]`` / users ``[B]`` are the batch's history windows and user ids, and ``row``
    ``[M]`` the batch row of each target when a row has several (windows), else ``M == B``.
    """
    if row is not None:
        item_seq = None if item_seq is None else item_seq[row]  # [M, L]
        users = None if users is None else users[row]  # [M]
    neg = negatives(target, item_seq, users)  # [M]
    pos_s = (user * item_emb[target]).sum(-1)  # [M]
    neg_s = (user * item_emb[neg]).sum(-1)  # [M]
    if kind == "bpr":
        return F.softplus(-(pos_s - neg_s)).mean()
    if kind == "bce":
        return F.softplus(-pos_s).mean() + F.softplus(neg_s).mean()
    raise ValueError(f"one-negative loss must be one of {ONE_NEGATIVE_LOSSES}, got {kind!r}")
