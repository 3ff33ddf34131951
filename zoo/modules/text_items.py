"""Text-aware item embedding (MIRACLE Sec. 3.2, HORAE Sec. 3.2.1; UniSRec).

An item is represented by its frozen text feature (a ``[N+1, d_b]`` table computed once by
``datamodules/features.py``; row 0 = padding = zeros) passed through the MoE adaptor
(:class:`zoo.modules.moe.MoEAdaptor`, Eqs. 2-4).  Two settings:

* inductive (``use_id=False``): text only, ``x_i = MoE(t_i)`` — pre-training, and MIRACLE's
  cold-start fine-tuning (Fig. 3);
* transductive (``use_id=True``): ``x_i + e_i`` with a new ID table ``E in R^{(N+1) x d_n}``
  (MIRACLE Sec. 3.4.4, HORAE Sec. 3.5.6), only in fine-tuning.

The text table is a NON-persistent buffer set from ``attach_side_info({"text": ...})``: it comes
from the data, so a pre-trained checkpoint carries no item-count-dependent tensor and loads into
a fine-tuning model over another catalogue.

Dropout masks of the adaptor (``adaptor_masks``):

* ``"position"`` (official code, default): every lookup runs the adaptor on its own rows, so
  each position of each sequence, and each pass (HORAE runs the encoder four times per
  pre-training step), draws its own dropout masks;
* ``"item"`` (approximate, faster): inside :meth:`TextItemEmbedding.shared_pass` the adaptor runs
  ONCE per training step over the step's distinct items and every lookup gathers from that
  table, so an item keeps one dropout mask per expert for the whole step, wherever it occurs.
  Same per-item distribution, fewer independent draws; on the embedded default it cuts HORAE's
  adaptor rows per pre-training step from 20,736 to about 1,300
  (``benchmarks/results/speed_train.md``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from zoo.modules.moe import MoEAdaptor


class TextItemEmbedding(nn.Module):
    """Frozen text features -> MoE adaptor (+ optional ID embedding).

    Args:
        num_items: N (ids 1..N, 0 = padding).  text_dim: d_b.  d: d_n.
        n_experts / adaptor_dropout: MoE adaptor settings (G = 8, dropout 0.3 in the papers).
        use_id: add an ID embedding (transductive setting).
        adaptor_masks: ``"position"`` (code) or ``"item"`` (one adaptor pass per step; see the
            module docstring).
        gate_bias: the MoE gate's bias b_1 (MIRACLE Eq. 3 as printed; the codes have none).
    """

    def __init__(
        self,
        num_items: int,
        text_dim: int,
        d: int,
        n_experts: int = 8,
        adaptor_dropout: float = 0.3,
        use_id: bool = False,
        adaptor_masks: str = "position",
        gate_bias: bool = False,
    ) -> None:
        super().__init__()
        if adaptor_masks not in ("position", "item"):
            raise ValueError(f"adaptor_masks must be 'position' or 'item', got {adaptor_masks!r}")
        self.adaptor_masks = adaptor_masks
        self._shared: tuple[Tensor, Tensor] | None = None  # (sorted ids [U], MoE(t_ids) [U, d]) in shared_pass
        self.num_items, self.text_dim, self.use_id = num_items, text_dim, use_id
        self.adaptor = MoEAdaptor(text_dim, d, n_experts, adaptor_dropout, gate_bias=gate_bias)
        self.id_embedding = nn.Embedding(num_items + 1, d) if use_id else None
        if self.id_embedding is not None:
            nn.init.normal_(self.id_embedding.weight, 0.0, 0.02)
        self.register_buffer("text", torch.zeros(0, text_dim), persistent=False)  # [N+1, d_b] once set
        self._cache: tuple[tuple, Tensor] | None = None

    def set_text(self, text: Tensor) -> None:
        """Install the frozen ``[N+1, d_b]`` text table (row 0 = padding)."""
        if text.dim() != 2 or text.shape != (self.num_items + 1, self.text_dim):
            raise ValueError(
                f"side info 'text': expected a float tensor [num_items+1, text_dim] = "
                f"[{self.num_items + 1}, {self.text_dim}], got {tuple(text.shape)} "
                "(is the model's text_dim / num_items linked to this dataset's stats.json?)"
            )
        self.text = text.detach().to(device=self.text.device, dtype=torch.float32)
        self._cache = None

    def _check(self) -> None:
        if self.text.shape[0] == 0:
            raise RuntimeError(
                "no item text features attached: this model embeds items by their text; set "
                "data.init_args.text_encoder (e.g. minilm) and require_text: true, or call "
                "model.attach_side_info({'text': tensor[num_items+1, text_dim]})"
            )

    def text_part(self, ids: Tensor) -> Tensor:
        """ids ``[...]`` -> MoE(t_ids) ``[..., d]`` (Eq. 2)."""
        self._check()
        if self._shared is not None:
            uniq, table = self._shared  # [U], [U, d]
            pos = torch.searchsorted(uniq, ids).clamp_(max=uniq.numel() - 1)  # [...]
            if not torch.equal(uniq[pos], ids):
                raise RuntimeError("TextItemEmbedding.shared_pass: a lookup asked for an item outside the step's ids")
            return table[pos]  # [..., d]
        return self.adaptor(self.text[ids])

    @contextmanager
    def shared_pass(self, ids: Tensor) -> Iterator[None]:
        """With ``adaptor_masks="item"`` in training: one adaptor pass over ``unique(ids)`` serves
        every lookup inside the block (which must ask only for those ids).  A no-op otherwise."""
        if not (self.training and self.adaptor_masks == "item"):
            yield
            return
        self._check()
        uniq = torch.unique(ids)  # [U] sorted
        self._shared = (uniq, self.adaptor(self.text[uniq]))  # [U], [U, d]
        try:
            yield
        finally:
            self._shared = None

    def forward(self, ids: Tensor, with_id: bool | None = None) -> Tensor:
        """ids ``[...]`` -> ``x`` (+ ``e`` when the ID table is used) ``[..., d]``."""
        x = self.text_part(ids)
        if (self.use_id if with_id is None else with_id) and self.id_embedding is not None:
            x = x + self.id_embedding(ids)
        return x

    def all_items(self, with_id: bool | None = None) -> Tensor:
        """Every item's embedding ``[N+1, d]``.

        In evaluation (``eval()`` mode and no autograd) the result is cached until any
        parameter is modified in place (optimizer step, ``load_state_dict``) or the text table
        changes, so full ranking does not re-run the adaptor over the catalogue each batch.
        """
        ids = torch.arange(self.num_items + 1, device=self.text.device)
        if self.training or torch.is_grad_enabled():
            return self.forward(ids, with_id)
        key = (with_id, self.text.data_ptr(), self.text._version, tuple((p.data_ptr(), p._version) for p in self.parameters()))
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self.forward(ids, with_id))
        return self._cache[1]
