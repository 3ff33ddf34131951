"""The shared LightningModule every model of the zoo subclasses.

A model implements three things and inherits the rest (training loop, loss logging,
full/sampled/multi-target evaluation in item chunks, optimiser, pre-trained checkpoint
loading with freezing, prediction):

* ``training_loss(batch) -> dict[str, Tensor]``: the named loss terms, each already weighted;
  the training loss is their sum and every term is logged as ``train/<name>``.
* ``user_representation(batch)``: whatever ``score_all`` takes (``[B, d]``, ``[B, K, d]``, a tuple).
* ``score_all(user_repr) -> Tensor [B, N+1]``: scores of every item (column 0 = padding).

Optionally ``attach_side_info(info)`` to receive item-side tensors from the datamodule (text or
image feature tables, item categories, popularity, category transitions; per user: training
items, time scales) — a model never opens a file — and ``score_candidates`` for a cheaper
sampled-negative evaluation.

Batch contract (produced by ``datamodules.base.SequentialDataModule``; sequences LEFT-padded
with item 0, the most recent item at position L-1):

================ =========== ==========================================================
user             [B]         user index
item_seq         [B, L]      history item ids
time_seq         [B, L]      history timestamps, int64 seconds (0 at pads)
seq_len          [B]         number of real items in item_seq
target           [B]         next item (leave-one-out train/valid/test, user_split train)
target_time      [B]         its timestamp (int64 seconds)
targets          [B, T]      user_split valid/test: every held-out item, padded with 0
neg_items        [B, n]      sampled-negative protocol: the seeded negatives
history_items    [B, H]      eval only: every item before the target (for history masking)
================ =========== ==========================================================
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from zoo.metrics import MultiTargetMetrics, RankingMetrics, factored_target_rank, masked_target_rank

COMPILE_SCOPES: tuple[str, ...] = ("modules", "loss")  # what compile_modules compiles


def missing_compiler(backend: str = "inductor") -> str | None:
    """Why ``torch.compile`` with ``backend`` cannot run here (inductor's CPU code generation needs a
    C++ compiler on PATH), or None when it can."""
    if backend != "inductor":
        return None
    if not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        return "no C++ compiler (g++/c++/clang++) on PATH: inductor's CPU backend needs one"
    try:
        import torch._inductor  # noqa: F401
    except Exception as e:  # pragma: no cover - broken install
        return f"torch._inductor does not import ({e})"
    return None


class SequentialRecommender(L.LightningModule):
    """Base class: training/eval loop, metrics, optimiser, pre-training hand-over.

    Args:
        num_items: number of real items N (ids 1..N; 0 is padding). Linked from the data.
        data_info: the cache's ``stats.json`` (feature dims, categories, time unit). Linked
            from the data; models read what they need from it.
        optimizer: ``"adam"`` or ``"adamw"``.
        lr: learning rate.  weight_decay: L2 / decoupled weight decay.
        param_group_lr: optional ``{module-name prefix: lr}`` for separate learning rates.
        decay_biases: apply ``weight_decay`` to biases too (default).  False puts every parameter
            whose own name contains "bias" (Linear and LayerNorm biases, a GRU's ``bias_ih`` /
            ``bias_hh``) in a ``weight_decay=0`` group, as ReChorus's
            ``BaseModel.customize_parameters`` (LayerNorm weights and embeddings keep the decay).
        topk: cut-offs K of the ranking metrics.
        eval_chunk_size: items per chunk when scoring all items for multi-interest models.
        mask_history: exclude each user's earlier items from the ranking (off, as the papers).
        pretrained_ckpt: a checkpoint of a pre-training run to initialise from (non-strict,
            with a printed report of matched / missing / unexpected / shape-mismatched keys).
        freeze: module names (attribute paths) whose parameters stay fixed after loading.
        detect_nonfinite: stop training with a message naming the loss term and step when a
            loss becomes NaN or infinite.
    """

    #: True when the user representation does not depend on how many left pads precede a
    #: history (checked per model by tests/test_device_paths.py's trimming test): evaluation then
    #: drops the columns that are padding in every row of a batch (:meth:`trim_padding`), which the
    #: datamodule's length-ordered evaluation batches make most of them on sparse data.
    pad_invariant: bool = False
    #: the batch keys laid out like ``item_seq [B, L]`` (left-padded histories; the windows'
    #: next items ``target_seq`` too)
    SEQUENCE_KEYS = ("item_seq", "time_seq", "target_seq")

    def __init__(
        self,
        num_items: int,
        data_info: dict[str, Any] | None = None,
        optimizer: str = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        param_group_lr: dict[str, float] | None = None,
        decay_biases: bool = True,
        topk: Sequence[int] = (10, 20, 50),
        eval_chunk_size: int = 4096,
        mask_history: bool = False,
        pretrained_ckpt: str | None = None,
        freeze: list[str] | None = None,
        detect_nonfinite: bool = True,
    ) -> None:
        super().__init__()
        if num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {num_items}")
        if optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer must be 'adam' or 'adamw', got {optimizer!r}")
        self.num_items = int(num_items)
        self.data_info = dict(data_info or {})
        self.optimizer_name, self.lr, self.weight_decay = optimizer, lr, weight_decay
        self.param_group_lr = dict(param_group_lr or {})
        self.decay_biases = decay_biases
        self.topk = list(topk)
        self.eval_chunk_size = eval_chunk_size
        self.mask_history = mask_history
        self.pretrained_ckpt = pretrained_ckpt
        self.freeze = list(freeze or [])
        self.detect_nonfinite = detect_nonfinite
        self._pretrained_loaded = False
        self.metrics = nn.ModuleDict(
            {
                f"{stage}_{kind}": cls(ks=self.topk, sync_on_compute=True)
                for stage in ("val", "test")
                for kind, cls in (("full", RankingMetrics), ("sampled", RankingMetrics), ("multi", MultiTargetMetrics))
            }
        )
        self._used_metrics: set[str] = set()
        # per-user ranks of the last test, every process's users (gathered), see zoo.ranks
        self.test_ranks: dict[str, Any] | None = None
        self._rank_parts: dict[str, list[dict[str, Any]]] = {}

    # ------------------------------------------------------------------ model API
    def training_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        raise NotImplementedError

    def user_representation(self, batch: dict[str, Tensor]) -> Any:
        raise NotImplementedError

    def score_all(self, user_repr: Any) -> Tensor:
        raise NotImplementedError

    def score_candidates(self, user_repr: Any, candidates: Tensor) -> Tensor:
        """Scores of ``candidates [B, C]``; default gathers from :meth:`score_all`."""
        return self.score_all(user_repr).gather(1, candidates)

    def ranking_factors(self, user_repr: Any) -> tuple[Tensor, Tensor] | None:
        """``(users [B, d], items [N+1, d])`` when ``score_all(user_repr)`` is exactly
        ``users @ items.T`` (single-vector models): evaluation then ranks in item chunks without
        materialising the score matrix (:func:`zoo.metrics.factored_target_rank`).  Default None."""
        return None

    def attach_side_info(self, info: dict[str, Tensor]) -> None:
        """Receive item-side tensors from the datamodule (default: nothing needed)."""

    def interests_for_predict(self, user_repr: Any) -> Tensor | None:
        """Multi-interest models return their ``[B, K, d]`` interest vectors here."""
        return None

    # ------------------------------------------------------------------ set-up
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "side_info"):
            self.attach_side_info(dm.side_info())
        if self.pretrained_ckpt and not self._pretrained_loaded:
            self.load_pretrained(self.pretrained_ckpt)
        self.apply_freeze()

    def load_pretrained(self, path: str | Path) -> dict[str, list[str]]:
        """Load a pre-training checkpoint non-strictly and print what matched."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"model.pretrained_ckpt: no checkpoint at '{path}' (run the matching *_pretrain recipe first)"
            )
        from zoo.safe_load import torch_load_weights

        ckpt = torch_load_weights(path, "model.init_args.pretrained_ckpt")  # never unpickles code (zoo ckpt convert)
        state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(f"model.pretrained_ckpt: '{path}' holds no state_dict of tensors (not a checkpoint?)")
        own = self.state_dict()
        loadable, mismatched = {}, []
        for k, v in state.items():
            if k in own and own[k].shape != v.shape:
                mismatched.append(f"{k} {tuple(v.shape)} -> {tuple(own[k].shape)}")
            elif k in own:
                loadable[k] = v
        result = self.load_state_dict(loadable, strict=False)
        report = {
            "matched": sorted(loadable),
            "missing": sorted(k for k in result.missing_keys if not k.startswith("metrics.")),
            "unexpected": sorted(k for k in state if k not in own),
            "shape_mismatch": mismatched,
        }
        if not loadable:
            raise ValueError(
                f"model.pretrained_ckpt: '{path}' shares no parameter with {type(self).__name__} "
                "(a checkpoint of another model?)"
            )
        print(
            f"[zoo] loaded pre-trained weights from {path}: {len(report['matched'])} matched, "
            f"{len(report['missing'])} missing, {len(report['unexpected'])} unexpected, "
            f"{len(mismatched)} shape-mismatched"
        )
        for key in ("missing", "unexpected", "shape_mismatch"):
            if report[key]:
                shown = ", ".join(report[key][:8]) + (" ..." if len(report[key]) > 8 else "")
                print(f"[zoo]   {key}: {shown}")
        self._pretrained_loaded = True
        return report

    def apply_freeze(self) -> None:
        for name in self.freeze:
            try:
                module = self.get_submodule(name)
            except AttributeError:
                params = dict(self.named_parameters())
                if name not in params:
                    raise ValueError(f"model.freeze: {type(self).__name__} has no module or parameter '{name}'")
                params[name].requires_grad_(False)
                continue
            for p in module.parameters():
                p.requires_grad_(False)

    def compile_modules(self, mode: str = "default", backend: str = "inductor", scope: str = "modules") -> list[str]:
        """``torch.compile`` the model in place (the CLI's ``compile`` and ``compile_scope`` switches).

        ``scope="modules"``: every sub-network (``nn.Module.compile``), each a graph of its own;
        ``scope="loss"``: the whole training objective, :meth:`training_loss` (sub-networks and
        loss terms in one graph, so the small element-wise ops between them fuse too; evaluation
        stays eager).  Parameter names are kept either way, so compiled and eager checkpoints are
        interchangeable; the metrics are left eager.  Returns what was compiled.
        """
        if backend == "inductor":
            # inductor's C++ builder imports setuptools, whose distutils shim asserts once the standard
            # library's distutils has been imported (by a logger's dependency, say): keep the stdlib's
            os.environ.setdefault("SETUPTOOLS_USE_DISTUTILS", "stdlib")
        mode_arg = None if mode == "default" else mode
        if scope == "loss":
            self.training_loss = torch.compile(self.training_loss, mode=mode_arg, backend=backend)
            return ["training_loss"]
        if scope != "modules":
            raise ValueError(f"compile_scope must be one of {COMPILE_SCOPES}, got {scope!r}")
        names = []
        for name, child in self.named_children():
            if name == "metrics" or next(child.parameters(), None) is None:
                continue
            child.compile(mode=mode_arg, backend=backend)
            names.append(name)
        return names

    def configure_optimizers(self) -> torch.optim.Optimizer:
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        groups: dict[tuple[float, float], list[nn.Parameter]] = {}
        for n, p in named:
            lr = next((v for k, v in self.param_group_lr.items() if n.startswith(k)), self.lr)
            no_decay = not self.decay_biases and "bias" in n.rsplit(".", 1)[-1]  # ReChorus: biases undecayed
            groups.setdefault((lr, 0.0 if no_decay else self.weight_decay), []).append(p)
        param_groups = [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]
        cls = torch.optim.AdamW if self.optimizer_name == "adamw" else torch.optim.Adam
        return cls(param_groups, lr=self.lr, weight_decay=self.weight_decay)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        if self.data_info.get("group_by_length"):  # batches of similar length: drop their common padding
            batch = self.trim_padding(batch)
        terms = self.training_loss(batch)
        loss = torch.stack(list(terms.values())).sum()
        if self.detect_nonfinite and not torch.isfinite(loss):
            bad = [k for k, v in terms.items() if not torch.isfinite(v)]
            raise FloatingPointError(
                f"training loss became non-finite at step {self.global_step}: "
                + ", ".join(f"{k}={terms[k].item()}" for k in bad)
            )
        B = batch["item_seq"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=B)
        if len(terms) > 1:
            self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, batch_size=B)
        return loss

    # ------------------------------------------------------------------ evaluation
    def trim_padding(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Drop the leading columns that are padding in every row (``pad_invariant`` models only):
        ``[B, L] -> [B, l]`` with l the batch's longest history (at least 1).  Exact: the user
        representation and the training losses are unchanged up to float rounding (in training
        the dropout masks are drawn for the shorter batch, so the random stream differs: it is
        applied there only with ``data.group_by_length``)."""
        if not self.pad_invariant or "seq_len" not in batch:
            return batch
        L = batch["item_seq"].shape[1]
        keep = max(int(batch["seq_len"].max()), 1)
        if keep >= L:
            return batch
        return {k: v[:, L - keep:] if k in self.SEQUENCE_KEYS else v for k, v in batch.items()}

    def _eval_step(self, batch: dict[str, Tensor], stage: str) -> None:
        batch = self.trim_padding(batch)
        user = self.user_representation(batch)
        if "neg_items" in batch:  # sampled-negative protocol: the target is candidate column 0
            cands = torch.cat([batch["target"][:, None], batch["neg_items"]], 1)  # [B, 1+n]
            scores = self.score_candidates(user, cands).float()
            key = f"{stage}_sampled"
            self.metrics[key].update(scores, torch.zeros_like(batch["target"]))
        elif "targets" not in batch:  # full ranking, one target: fused mask + count (zoo/metrics.py)
            key = f"{stage}_full"
            self.metrics[key].update(ranks=self.full_ranks(user, batch))
        else:  # several targets per user (the ComiRec protocol)
            scores = self.score_all(user).float()  # [B, N+1]
            scores[:, 0] = float("-inf")
            targets = batch["targets"]  # [B, T]
            if self.mask_history and "history_items" in batch:
                keep = scores.gather(1, targets)
                scores.scatter_(1, batch["history_items"], float("-inf"))
                scores.scatter_(1, targets, keep)  # a repeated target stays rankable
                scores[:, 0] = float("-inf")
            key = f"{stage}_multi"
            self.metrics[key].update(scores, targets)
        self._used_metrics.add(key)
        sink = self.metrics[key].rank_sink
        if stage == "test" and sink is not None:  # per-user ranks: O(users), kept on the CPU
            from zoo.ranks import batch_ranks

            n_cand = scores.shape[1] if key == "test_sampled" else self.num_items
            self._rank_parts.setdefault(key, []).extend(dict(batch_ranks(e, batch["user"]), n_candidates=n_cand) for e in sink)
            sink.clear()

    def full_ranks(self, user: Any, batch: dict[str, Tensor]) -> Tensor:
        """``[B]`` rank of each target among all items (pad excluded; history too with
        ``mask_history``), pessimistic ties: the metrics' convention (zoo/metrics.py)."""
        history = batch.get("history_items") if self.mask_history else None
        factors = self.ranking_factors(user)
        if factors is not None:
            return factored_target_rank(*factors, batch["target"], history, self.eval_chunk_size)
        return masked_target_rank(self.score_all(user).float(), batch["target"], history)

    def _eval_epoch_end(self, stage: str) -> None:
        for key in sorted(k for k in self._used_metrics if k.startswith(stage + "_")):
            values = self.metrics[key].compute()
            self.log_dict({f"{stage}/{name}": v for name, v in values.items()}, prog_bar=False, sync_dist=False)
            self.metrics[key].reset()
            self._used_metrics.discard(key)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_start(self) -> None:
        self.test_ranks, self._rank_parts = None, {}
        for kind in ("full", "sampled", "multi"):
            self.metrics[f"test_{kind}"].rank_sink = []

    def on_test_epoch_end(self) -> None:
        self._gather_test_ranks()
        self._eval_epoch_end("test")

    def _gather_test_ranks(self) -> None:
        """Every process's per-user ranks to each process (rank-ordered, so the users come in the
        single-process order): ``self.test_ranks = {"protocol", "n_candidates", "ks", "parts"}``."""
        from zoo.ranks import concat_parts

        for kind in ("full", "sampled", "multi"):
            self.metrics[f"test_{kind}"].rank_sink = None
        local = {k.removeprefix("test_"): v for k, v in self._rank_parts.items()}
        self._rank_parts = {}
        per_rank = [local]
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            per_rank = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(per_rank, local)
        protocols = sorted({k for d in per_rank for k in d})
        if len(protocols) != 1:
            return  # nothing tested (or a mix no datamodule produces)
        parts = [p for d in per_rank for p in d.get(protocols[0], [])]
        if not parts:
            return
        n_cand = max(int(p.pop("n_candidates")) for p in parts)
        self.test_ranks = {"protocol": protocols[0], "n_candidates": n_cand, "ks": list(self.topk),
                           "parts": concat_parts(parts)}

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Top-K item ids (K = max(topk)) per user, and the interests of multi-interest models."""
        batch = self.trim_padding(batch)
        user = self.user_representation(batch)
        scores = self.score_all(user).float()
        scores[:, 0] = float("-inf")
        top = scores.topk(min(max(self.topk), self.num_items), dim=1)
        out = {"user": batch["user"], "items": top.indices, "scores": top.values}
        interests = self.interests_for_predict(user)
        if interests is not None:
            out["interests"] = interests
        return out
