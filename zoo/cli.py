"""The ``zoo`` command: one YAML recipe per experiment.

    zoo fit --config recipes/sasrec.yaml          # train, early-stop, test the best checkpoint
    zoo test --run runs/sasrec                    # the run's config.yaml + best.ckpt -> runs/sasrec/test-<stamp>.json
    zoo test --config recipes/sasrec.yaml --ckpt_path runs/sasrec/best.ckpt   # writes beside the checkpoint
    zoo fit --config recipes/sasrec.yaml --ckpt_path last     # resume an interrupted run
    zoo fit --config recipes/sasrec.yaml --overwrite true     # replace the finished run in runs/sasrec
    zoo ckpt convert --trust-pickle old.ckpt old.safe.ckpt    # weights-only copy of a trusted legacy file
    zoo data prepare --format movielens --path ml-1m/ --k 5   # process + summarise a dataset
    zoo data stats ~/.cache/zoo/<dataset>-<key>

``ZooCLI`` is a ``LightningCLI``: the recipe picks the model and datamodule by ``class_path``;
``data.num_items`` and ``data.info`` (the processed cache's stats) are linked into the model when
it is built.  Top-level recipe keys beyond Lightning's: ``monitor``, ``monitor_mode``,
``patience``, ``test_after_fit``, ``run_dir``, ``overwrite``, ``wandb``, ``last_every_n_steps``, ``compile``,
``compile_backend``, ``matmul_precision``, ``cpu_allocator``, ``tune`` (the ``zoo tune`` search space; fit ignores it).  Run-folder rules (lock, no
overwriting, stamped outputs): ``zoo/runfiles.py`` and docs/reliability.md.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from jsonargparse import ArgumentError
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.io import CheckpointIO, TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from datamodules.base import SequentialDataModule
from zoo.allocator import release_freed_memory, retain_freed_memory
from zoo.models.base import SequentialRecommender, missing_compiler
from zoo.provenance import emulated_bf16_note, run_environment
from zoo.runfiles import (RunFolderBusy, RunLock, atomic_write, check_fit_folder, remove_fit_files, remove_if_no_results,
                          stamped_path, write_new)


class _DropLitLoggerTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def quiet_lightning_noise(run_dir: Path) -> None:
    """Silence Lightning messages that say nothing about the run: the LitLogger advert, the
    torch-2.13 ``LeafSpec`` deprecation inside Lightning's pytree helper, and "checkpoint
    directory exists and is not empty" when the folder holds no checkpoint (only the logs the
    CSV logger has just created).  A folder with checkpoints keeps the warning."""
    tip = _DropLitLoggerTip()
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLitLoggerTip) for f in logger.filters):
            logger.addFilter(tip)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    if not any(run_dir.glob("*.ckpt")):
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")


class CheckpointError(ValueError):
    """A ``--ckpt_path`` checkpoint is unreadable or does not fit the recipe's model and data."""


def describe_state_dict_error(message: str, limit: int = 4) -> str:
    """torch's multi-line ``load_state_dict`` error -> one short line (mismatched shapes, key lists)."""
    parts = []
    shapes = re.findall(
        r"size mismatch for ([\w.]+): copying a param with shape torch\.Size\((\[[^\]]*\])\) from checkpoint, "
        r"the shape in current model is torch\.Size\((\[[^\]]*\])\)", message)
    if shapes:
        shown = [f"{k} is {a} in the checkpoint but {b} here" for k, a, b in shapes[:limit]]
        parts.append("size mismatch: " + "; ".join(shown) + (f" (+{len(shapes) - limit} more)" if len(shapes) > limit else ""))
    for label in ("Missing", "Unexpected"):
        m = re.search(label + r" key\(s\) in state_dict: (.*?)\.?\s*$", message, re.M)
        if m:
            keys = re.findall(r'"([^"]+)"', m.group(1))
            parts.append(f"{label.lower()} keys: " + ", ".join(keys[:limit]) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else ""))
    return "; ".join(parts) or message.splitlines()[0]


class TopKWriter(BasePredictionWriter):
    """``zoo predict`` output: ``predictions.csv`` with each user's top-K items in the publisher's
    original ids (and scores), plus ``interests.pt`` for multi-interest models.  One file per rank
    under DDP (``predictions.rank<r>.csv``); every file is written atomically."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(write_interval="epoch")
        self.run_dir = Path(run_dir)

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        """Columns (docs/cli.md, "Predictions"): ``user_id`` (the publisher's user id),
        ``user_index`` (the zoo's 0-based user index in the cache), ``items`` (top-K item ids of
        the publisher, best first, space-separated) and ``scores`` (their scores, same order)."""
        import csv
        import io

        dm = trainer.datamodule
        item_ids = ["<pad>"] + list(dm.data.item_ids)
        if hasattr(dm, "original_user_ids"):
            user_ids = dm.original_user_ids()
        else:  # each domain cache's user_ids.json: user index -> the publisher's id
            domains = getattr(dm, "domains", [dm.data])
            user_ids = []
            for d in domains:
                own = json.loads((Path(d.path) / "user_ids.json").read_text(encoding="utf-8"))
                user_ids += [f"{d.stats['name']}:{u}" for u in own] if len(domains) > 1 else own
        suffix = f".rank{trainer.global_rank}" if trainer.world_size > 1 else ""
        buf = io.StringIO()
        rows = csv.writer(buf, lineterminator="\n")  # quotes an id holding a comma, quote or newline
        rows.writerow(["user_id", "user_index", "items", "scores"])
        interests = []
        for out in predictions:
            for u, items, scores in zip(out["user"].tolist(), out["items"].tolist(), out["scores"].tolist()):
                rows.writerow([user_ids[u], u, " ".join(item_ids[i] for i in items), " ".join(f"{x:.5g}" for x in scores)])
            if "interests" in out:
                interests.append(out["interests"].cpu())
        text = buf.getvalue()
        if trainer.world_size > 1:  # one stamp for all ranks, chosen by rank 0
            stem = trainer.strategy.broadcast(stamped_path(self.run_dir, "predictions-", ".csv").stem)
            out = self.run_dir / f"{stem}{suffix}.csv"
            atomic_write(out, text)
        else:
            out = write_new(self.run_dir, "predictions-", ".csv", text)  # never replaces a file
        if interests:
            target = out.with_name(out.name.replace("predictions-", "interests-").removesuffix(".csv") + ".pt")
            table = torch.cat(interests)
            atomic_write(target, lambda f: torch.save(table, f))
        print(f"[zoo] wrote top-{len(predictions[0]['items'][0]) if predictions else 0} predictions to {out}")


class EpochSeed(Callback):
    """Make ``--ckpt_path`` resume draw the same random numbers as an uninterrupted run.

    Lightning restores weights, optimiser and loop counters but not the random streams (dropout,
    sampled negatives), and when the DataLoader iterator takes its seed from the global generator
    differs between a fresh and a continuing process.  So the torch/numpy/python generators are
    seeded at the first batch of every training epoch from ``(seed_everything, epoch, rank)``:
    each epoch's randomness is a function of the run seed and the epoch alone, and a run resumed
    from an epoch-end checkpoint is exact.  A mid-epoch checkpoint also stores each rank's
    generator states, put back at the first batch after resuming.
    """

    KEY = "zoo_rng_states"

    @staticmethod
    def _states() -> dict[str, Any]:
        import random

        import numpy as np
        import torch

        kind, keys, pos, has_gauss, gauss = np.random.get_state()  # plain types: checkpoints load weights_only
        return {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos),
                                                          int(has_gauss), float(gauss)],
                "python": random.getstate(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    @staticmethod
    def _restore(st: dict[str, Any]) -> None:
        import random

        import numpy as np
        import torch

        torch.set_rng_state(st["torch"])
        kind, keys, pos, has_gauss, gauss = st["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        random.setstate(st["python"])
        if st["cuda"] and torch.cuda.is_available() and len(st["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(st["cuda"])

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if trainer.fit_loop.epoch_loop._num_ready_batches_reached():
            return  # epoch end: the next epoch is seeded from (seed, epoch, rank)
        per_rank = [self._states()]
        if trainer.world_size > 1:
            import torch.distributed as dist

            per_rank = [None] * trainer.world_size
            dist.all_gather_object(per_rank, self._states())
        checkpoint[self.KEY] = per_rank

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get(self.KEY)
        if saved and len(saved) == trainer.world_size:
            self._pending = saved[trainer.global_rank]

    def on_train_batch_start(self, trainer, pl_module, batch: Any, batch_idx: int) -> None:
        if self._pending is not None:
            self._restore(self._pending)
            self._pending = None
        elif batch_idx == 0:
            import random

            import numpy as np
            import torch

            base = int(os.environ.get("PL_GLOBAL_SEED", "0"))
            seed = int(np.random.SeedSequence([base, trainer.current_epoch, trainer.global_rank]).generate_state(1)[0])
            torch.manual_seed(seed)  # CPU and every CUDA device
            np.random.seed(seed)
            random.seed(seed)


def moved_checkpoint_state(state: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """A ``ModelCheckpoint`` state saved with run folder ``old``, as if saved in ``new``: every path
    under ``old`` (best/kth/last paths, the keys of ``best_k_models``) re-rooted, ``dirpath`` = ``new``."""

    def moved(path: Any) -> Any:
        if not isinstance(path, str) or not path:
            return path
        rel = os.path.relpath(path, old)
        return path if rel == os.pardir or rel.startswith(os.pardir + os.sep) else os.path.join(new, rel)

    out = dict(state, dirpath=new)
    for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
        if key in out:
            out[key] = moved(out[key])
    if isinstance(out.get("best_k_models"), dict):
        out["best_k_models"] = {moved(k): v for k, v in out["best_k_models"].items()}
    return out


class FollowsRunFolder(ModelCheckpoint):
    """A checkpoint callback that resumes in a run folder which has moved since the checkpoint was
    written (another clone, another machine: ``zoo reproduce --archive-unfinished``).  Lightning 2.6
    drops the best score and the top-k record when ``dirpath`` differs, so the first validation after
    such a resume would overwrite ``best.ckpt`` with a worse epoch; here the saved paths are re-rooted
    to this folder instead (:func:`moved_checkpoint_state`) and the whole state is restored."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old = state_dict.get("dirpath")
        if isinstance(old, str) and self.dirpath and os.path.normpath(old) != os.path.normpath(self.dirpath):
            state_dict = moved_checkpoint_state(state_dict, old, self.dirpath)
        super().load_state_dict(state_dict)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints published whole or not at all, staged in their own folder
    (:func:`~zoo.runfiles.atomic_write`: a temporary file beside the target, then ``os.replace``).
    Lightning's writer stages a local checkpoint in the system temporary folder and moves it into
    place; where that folder is on another file system (a node-local ``/tmp`` beside a shared run
    folder, as on most clusters) the move is a copy into the target itself, so a kill or a full disk
    during it leaves a truncated ``last.ckpt`` and the previous one is gone.  Remote paths
    (``s3://``...) and ``storage_options`` keep Lightning's writer."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_write(path, lambda f: torch.save(checkpoint, f))
        return None


class BestCheckpoint(FollowsRunFolder):
    """``best.ckpt``: the top-1 epoch on the monitor.  Its state key stays plain ModelCheckpoint's,
    so checkpoints written before this class existed resume with their best score."""

    def _generate_state_key(self, **kwargs: Any) -> str:
        return f"ModelCheckpoint{kwargs!r}"


class EpochLastCheckpoint(FollowsRunFolder):
    """``last.ckpt`` after EVERY epoch.  Lightning 2.6's ``save_last`` writes it only when a top-k
    checkpoint was written at the same step, so next to ``best.ckpt`` (top-1 on the monitor) it
    stayed at the best epoch: resuming "from last" went back to the best epoch, and fine-tuning
    from a pre-training run's last.ckpt loaded its best-validation epoch instead of the final one.
    This callback writes no top-k file and marks every epoch as saved, so Lightning's own hooks
    (end of validation, or of the training epoch) write ``last.ckpt`` each time."""

    def __init__(self, dirpath: Path) -> None:
        super().__init__(dirpath=dirpath, save_top_k=0, save_last=True, enable_version_counter=False)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(kind="epoch_last")

    def _save_topk_checkpoint(self, trainer, monitor_candidates) -> None:
        self._last_global_step_saved = trainer.global_step  # nothing to keep but "last"


class StepLastCheckpoint(FollowsRunFolder):
    """Refreshes ``last.ckpt`` every N training steps (``last_every_n_steps``), next to the
    best/last-at-epoch-end callback; its own state key lets a user add further checkpoints."""

    @property
    def state_key(self) -> str:
        return self._generate_state_key(kind="step_last", every_n_train_steps=self._every_n_train_steps)


class LastAtStop(Callback):
    """``last.ckpt`` at the step where SIGTERM or a first Ctrl-C stopped the fit (a scheduler's
    pre-emption or time limit, ``kill``, ``zoo reproduce`` stopping its fits, a user at the
    terminal), so ``--ckpt_path last`` resumes there exactly, inside the epoch (``ResumableLoader``,
    :class:`EpochSeed`), instead of at the last epoch end.  Lightning turns SIGTERM into
    ``SIGTERMException`` at the next boundary between two training batches (all ranks together under
    DDP) or inside validation; only the first is a consistent mid-epoch state, so a stop during
    validation keeps the epoch-end ``last.ckpt``.

    Ctrl-C: while the fit trains, the first SIGINT asks for the same stop (Lightning's SIGTERM flag)
    instead of raising ``KeyboardInterrupt`` wherever it lands (an optimiser step included, leaving
    nothing consistent to save); a second Ctrl-C interrupts at once, as before (main thread only).
    """

    def __init__(self, dirpath: Path) -> None:
        self.path = Path(dirpath) / "last.ckpt"
        self._previous_sigint: Any = None

    def on_fit_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        global STOP_REQUESTED_BY
        STOP_REQUESTED_BY = None
        if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            return  # a worker thread cannot take signals; an ignored Ctrl-C stays ignored

        def stop_at_next_step(signum: int, frame: Any) -> None:
            global STOP_REQUESTED_BY
            STOP_REQUESTED_BY = "Ctrl-C"
            signal.signal(signal.SIGINT, signal.default_int_handler)  # the next Ctrl-C interrupts at once
            trainer._signal_connector.received_sigterm = True
            if trainer.is_global_zero:
                print("\n[zoo] Ctrl-C: stopping after this training step and writing last.ckpt "
                      "(Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

        self._previous_sigint = signal.signal(signal.SIGINT, stop_at_next_step)

    def teardown(self, trainer, pl_module, stage: str) -> None:  # noqa: ANN001
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:  # noqa: ANN001
        if not isinstance(exception, SIGTERMException) or not trainer.training:
            return
        if trainer.fit_loop.epoch_loop._num_ready_batches_reached():
            return  # the epoch's last batch: its epoch-end last.ckpt is (or is about to be) the resume point
        trainer.save_checkpoint(self.path)
        if trainer.is_global_zero:
            print(f"[zoo] stopped by {STOP_REQUESTED_BY or 'SIGTERM'} at step {trainer.global_step} "
                  f"(epoch {trainer.current_epoch}): wrote {self.path}; --ckpt_path last resumes here", file=sys.stderr)


STOP_REQUESTED_BY: str | None = None  # "Ctrl-C" when LastAtStop turned a SIGINT into Lightning's graceful stop


class RetainFreedMemory(Callback):
    """``--cpu_allocator retain``: while a run trains or evaluates on the CPU (after the data is
    set up), glibc keeps freed memory for the next step instead of unmapping it
    (``zoo/allocator.py``: the same numbers, no page faults on every large tensor); released at
    teardown."""

    def __init__(self) -> None:
        self.active = False

    def setup(self, trainer, pl_module, stage: str) -> None:  # noqa: ANN001
        if trainer.strategy.root_device.type == "cpu":
            self.active = retain_freed_memory()

    def teardown(self, trainer, pl_module, stage: str) -> None:  # noqa: ANN001
        if self.active:
            release_freed_memory()
            self.active = False


class ReplaceOldRun(Callback):
    """``--overwrite true``: the previous run's test metrics/ranks are removed when this fit writes its
    first checkpoint (a fit that fails before that leaves the old run untouched)."""

    def __init__(self, stale: list[Path]) -> None:
        self.stale = stale

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if self.stale and trainer.is_global_zero:
            remove_fit_files([p for p in self.stale if p.suffix != ".ckpt"])  # checkpoints are replaced in place
        self.stale = []


class RunConfig(SaveConfigCallback):
    """Also saves the fit's full config as ``<run folder>/config.yaml`` (atomically, with the first
    checkpoint, so a fit that fails before it replaces nothing), the file ``zoo test --run DIR`` /
    ``zoo predict --run DIR`` read back."""

    _pending: tuple[Path, str] | None = None

    def save_config(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit" and trainer.checkpoint_callback is not None and trainer.checkpoint_callback.dirpath:
            self._pending = (Path(trainer.checkpoint_callback.dirpath) / "config.yaml",
                             self.parser.dump(self.config, skip_none=False))

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if self._pending is not None and trainer.is_global_zero:
            atomic_write(*self._pending)
        self._pending = None


class RunGuard:
    """The run folder of one command: locked for a fit, cleaned of empty folders if it fails."""

    active: list["RunGuard"] = []

    def __init__(self, folder: Path, lock: bool) -> None:
        self.folder = Path(folder)
        self.existed = self.folder.exists()
        self.lock = RunLock(self.folder).acquire() if lock else None
        RunGuard.active.append(self)

    def finish(self, ok: bool) -> None:
        if self.lock is not None:
            self.lock.release()
        if not ok:
            remove_if_no_results(self.folder, self.existed)

    @classmethod
    def finish_all(cls, ok: bool) -> None:
        while cls.active:
            cls.active.pop().finish(ok)


def _is_rank_zero_process() -> bool:
    """False in the processes Lightning's DDP launcher starts for ranks > 0 (they inherit rank 0's checks)."""
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


class ZooCLI(LightningCLI):
    """LightningCLI with the zoo's links, default callbacks, run directory and test-after-fit."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--monitor", type=str, default="val/ndcg@10", help="validation metric for checkpointing and early stopping")
        parser.add_argument("--monitor_mode", type=str, default="max", help="max or min")
        parser.add_argument("--patience", type=int, default=5, help="early-stopping patience in validation rounds (0 = off)")
        parser.add_argument("--test_after_fit", type=bool, default=True, help="test the best checkpoint after fit")
        parser.add_argument("--last_every_n_steps", type=int, default=0,
                            help="also refresh last.ckpt every N training steps (0 = at epoch ends only); "
                                 "`--ckpt_path last` then resumes inside the epoch, exactly")
        parser.add_argument("--compile", type=str, default="off",
                            help="torch.compile the model's sub-networks: off | default | reduce-overhead | max-autotune")
        parser.add_argument("--compile_backend", type=str, default="inductor", help="torch.compile backend")
        parser.add_argument("--compile_scope", type=Literal["modules", "loss"], default="modules",
                            help="what --compile compiles: modules (each sub-network) | loss (the whole training "
                                 "objective in one graph; evaluation stays eager)")
        parser.add_argument("--matmul_precision", type=Literal["highest", "high", "medium"], default="highest",
                            help="torch.set_float32_matmul_precision: highest (exact fp32, PyTorch's default) | high "
                                 "(TF32 tensor cores on NVIDIA GPUs: several times faster fp32 matmuls, ~1e-3 relative "
                                 "error) | medium")
        parser.add_argument("--cpu_allocator", type=Literal["retain", "system"], default="retain",
                            help="CPU runs: retain (glibc keeps freed memory for reuse: no page faults on every large "
                                 "tensor, same numbers, TiSASRec 2.4x faster; peak memory up to a third higher) | "
                                 "system (glibc's defaults)")
        parser.add_argument("--run_dir", type=str | None, default=None, help="output folder (default runs/<recipe name>)")
        parser.add_argument("--wandb", type=str, default="off", help="W&B logging: off, offline or online (WANDB_MODE overrides)")
        parser.add_argument("--overwrite", type=bool, default=False,
                            help="fit into a run folder that already holds a finished run, replacing it")
        parser.add_argument("--tune", type=dict[str, Any] | None, default=None,
                            help="search space for `zoo tune` (ignored by fit/validate/test/predict), see docs/tune.md")
        parser.link_arguments("data.num_items", "model.init_args.num_items", apply_on="instantiate")
        parser.link_arguments("data.info", "model.init_args.data_info", apply_on="instantiate")

    def _parse_ckpt_path(self) -> None:
        """Lightning re-reads the model's hyper-parameters from ``--ckpt_path``; refuse a checkpoint of
        another model class instead of silently swapping the recipe's model for the checkpoint's."""
        cfg = self.config.get(self.config.get("subcommand") or "", None)
        ckpt_path = cfg.get("ckpt_path") if cfg is not None else None
        if ckpt_path and Path(ckpt_path).is_file():
            from zoo.safe_load import UnsafePickleError, torch_load_weights

            try:
                ckpt = torch_load_weights(ckpt_path, "--ckpt_path")
            except UnsafePickleError:
                raise
            except ValueError as e:  # truncated or not a checkpoint
                raise CheckpointError(f"--ckpt_path '{ckpt_path}' is not a readable Lightning checkpoint "
                                      f"({e.__cause__ or e})") from e
            if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
                raise CheckpointError(f"--ckpt_path '{ckpt_path}' is not a Lightning checkpoint (no state_dict)")
            theirs = (ckpt.get("hyper_parameters") or {}).get("_class_path")
            ours = (cfg.get("model") or {}).get("class_path")
            if theirs and ours and theirs != ours:
                raise CheckpointError(
                    f"--ckpt_path '{ckpt_path}' is a checkpoint of {theirs}, but the recipe builds {ours}; "
                    "use the recipe (model) the checkpoint was trained with"
                )
        super()._parse_ckpt_path()

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except (pickle.UnpicklingError, EOFError) as e:  # --ckpt_path last/best resolved to an unreadable file
            from zoo.safe_load import UnsafePickleError, first_line, unsafe_message

            if "Weights only load failed" in str(e):
                raise UnsafePickleError(unsafe_message("--ckpt_path", self._cfg().get("ckpt_path"), str(e))) from e
            raise CheckpointError(f"--ckpt_path '{self._cfg().get('ckpt_path')}': not a readable checkpoint "
                                  f"({first_line(e)})") from e
        except (RuntimeError, MisconfigurationException) as e:
            if "conditioned on metric" in str(e) or "could not find the monitored key" in str(e):
                monitor = self._cfg().get("monitor")
                logged = ", ".join(sorted(k for k in self.trainer.callback_metrics if k.startswith("val/")))
                raise ValueError(f"monitor: '{monitor}' is not a metric this model logs (validation metrics: {logged}); "
                                 "set --monitor to one of them (model.init_args.topk sets the cut-offs)") from e
            if isinstance(e, MisconfigurationException):
                raise
            if "PytorchStreamReader" in str(e):
                raise CheckpointError(f"--ckpt_path '{self._cfg().get('ckpt_path')}': not a readable checkpoint ({e})") from e
            if "Error(s) in loading state_dict" not in str(e):
                raise
            raise CheckpointError(
                f"--ckpt_path '{self._cfg().get('ckpt_path')}' does not fit the {type(self.model).__name__} built "
                f"from this recipe and data ({self.model.num_items} items): {describe_state_dict_error(str(e))} "
                "(a checkpoint trained on other data or with other model sizes?)"
            ) from e

    # ------------------------------------------------------------------
    def _cfg(self) -> Any:
        return self.config[self.subcommand] if self.subcommand else self.config

    def run_dir(self) -> Path:
        """``--run_dir`` if given; else fit: ``runs/<recipe name>``, test/validate/predict: the folder of
        the checkpoint they were given (their outputs have stamped names, so nothing is replaced)."""
        cfg = self._cfg()
        ckpt = cfg.get("ckpt_path")
        if cfg.get("run_dir"):
            return Path(cfg["run_dir"])
        if self.subcommand != "fit" and ckpt and Path(ckpt).is_file():
            return Path(ckpt).parent
        configs = cfg.get("config") or []
        if configs:
            name = Path(str(configs[0])).stem
        else:
            model = cfg.get("model") or {}
            name = str(model.get("class_path", "model")).rsplit(".", 1)[-1].lower()
        return Path("runs") / name

    def before_instantiate_classes(self) -> None:
        """Before any data is read: a fit checks and locks its folder; every command gets a guard that
        removes what a failed run would leave empty."""
        if self.subcommand is None or not _is_rank_zero_process():
            return
        folder, cfg = self.run_dir(), self._cfg()
        self._stale: list[Path] = []
        if self.subcommand == "fit":
            RunGuard(folder, lock=True)  # first: a concurrent fit of the same folder is told it is busy
            ckpt = cfg.get("ckpt_path")  # resuming this folder's own run: `last`, or one of its checkpoints
            resuming = bool(ckpt) and (str(ckpt) in ("last", "best", "hpc")
                                       or Path(ckpt).resolve().is_relative_to(folder.resolve()))
            self._stale = check_fit_folder(folder, bool(cfg.get("overwrite")), resuming)
        else:
            RunGuard(folder, lock=False)

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if kwargs.get("weights_only") is False:
            raise ValueError("--weights_only false would let a checkpoint run code while loading; the zoo only "
                             "reads weights (convert a trusted legacy file with `zoo ckpt convert --trust-pickle IN OUT`)")
        if "weights_only" in kwargs:
            kwargs["weights_only"] = True
        return kwargs

    def _trainer_list(self, key: str, kwargs: dict[str, Any]) -> list[Any]:
        """The recipe's / command line's ``trainer.<key>`` (callbacks, plugins), then the caller's ``kwargs[key]``.

        Passing ``callbacks=`` or ``plugins=`` to the trainer replaces the configured ones, so the zoo's
        own are appended to this list instead; a single configured object counts as a list of one.
        """
        configured = self._get(self.config_init, "trainer", default={}).get(key) or []
        return [*(configured if isinstance(configured, list) else [configured]), *(kwargs.pop(key, None) or [])]

    def instantiate_trainer(self, **kwargs: Any):
        cfg = self._cfg()
        run_dir = self.run_dir()
        quiet_lightning_noise(run_dir)
        precision = cfg.get("matmul_precision") or "highest"
        if precision != torch.get_float32_matmul_precision():
            torch.set_float32_matmul_precision(precision)
            print(f"[zoo] float32 matmul precision: {precision}")
        if cfg.get("compile", "off") not in ("off", None, False):
            backend, scope = cfg.get("compile_backend", "inductor"), cfg.get("compile_scope", "modules")
            missing = missing_compiler(backend)
            if missing:  # a speed-only switch (same numerics within float tolerance): train eager
                print(f"[zoo] torch.compile skipped, training eager: {missing}")
            else:
                compiled = self.model.compile_modules(str(cfg["compile"]), backend, scope)
                print(f"[zoo] torch.compile ({cfg['compile']}, {backend}, scope {scope}): {', '.join(compiled)}")
        callbacks = self._trainer_list("callbacks", kwargs)
        monitor, mode = cfg.get("monitor"), cfg.get("monitor_mode", "max")
        if self.subcommand == "fit":
            callbacks.append(
                BestCheckpoint(dirpath=run_dir, filename="best", monitor=monitor, mode=mode, save_last=False,
                               enable_version_counter=False, auto_insert_metric_name=False)
            )
            callbacks.append(EpochLastCheckpoint(run_dir))  # last.ckpt = the latest epoch, improved or not
            if cfg.get("last_every_n_steps", 0) > 0:  # mid-epoch last.ckpt (the loader resumes exactly)
                callbacks.append(StepLastCheckpoint(dirpath=run_dir, save_top_k=0, save_last=True,
                                                    every_n_train_steps=cfg["last_every_n_steps"],
                                                    enable_version_counter=False))
            callbacks.append(EpochSeed())
            callbacks.append(LastAtStop(run_dir))
            if getattr(self, "_stale", None):
                callbacks.append(ReplaceOldRun(self._stale))
            if cfg.get("patience", 0) > 0:
                callbacks.append(EarlyStopping(monitor=monitor, mode=mode, patience=cfg["patience"]))
        if self.subcommand == "predict":
            callbacks.append(TopKWriter(run_dir))
        if cfg.get("cpu_allocator", "retain") == "retain":
            callbacks.append(RetainFreedMemory())
        plugins = self._trainer_list("plugins", kwargs)
        if not any(isinstance(p, CheckpointIO) for p in plugins):  # a user's own CheckpointIO wins
            plugins.append(AtomicCheckpointIO())
        kwargs["plugins"] = plugins
        trainer_cfg = cfg["trainer"]
        if note := emulated_bf16_note(trainer_cfg.get("precision"), trainer_cfg.get("accelerator")):
            print(f"[zoo] note: {note}")
        if trainer_cfg.get("logger") in (None, True):
            loggers = [CSVLogger(save_dir=str(run_dir), name="logs")]
            wb = os.environ.get("WANDB_MODE") or cfg.get("wandb", "off")
            if wb not in ("off", "disabled") and cfg.get("wandb", "off") != "off":
                from lightning.pytorch.loggers import WandbLogger

                loggers.append(
                    WandbLogger(project="zoo", name=run_dir.name, save_dir=str(run_dir), offline=wb != "online",
                                config=self._plain_config())
                )
            self.config_init[self.subcommand]["trainer"]["logger"] = loggers
            kwargs["logger"] = loggers
        return super().instantiate_trainer(callbacks=callbacks, **kwargs)

    def _plain_config(self) -> dict[str, Any]:
        return json.loads(json.dumps(self._cfg().as_dict(), default=str))

    def _write_test_ranks(self, metrics_path: Path) -> None:
        """The per-user ranks of the test just run, beside its metrics file (``zoo.ranks``); written
        before the metrics so a metrics file always has its ranks."""
        tr = getattr(self.model, "test_ranks", None)
        if not tr:
            return
        from zoo.ranks import make_ranks, save_ranks
        from zoo.runfiles import ranks_path_for

        user_ids = self.datamodule.original_user_ids() if hasattr(self.datamodule, "original_user_ids") else \
            [str(u) for u in range(int(tr["parts"]["user"].max(initial=-1)) + 1)]
        ranks = make_ranks(tr["protocol"], tr["parts"], user_ids, tr["n_candidates"], tr["ks"])
        save_ranks(ranks_path_for(metrics_path), ranks)

    def _write_metrics(self, stage: str, results: list[dict[str, float]]) -> Path | None:
        """``<stage>-<stamp>.json`` beside the checkpoint: never replaces a file (a fit's test_metrics.json).
        A test's per-user ranks go to the matching ``ranks-<stamp>.npz``."""
        if self.trainer.is_global_zero and results:
            out = {stage: {k: float(v) for k, v in results[0].items()}, "checkpoint": self._cfg().get("ckpt_path"),
                   "config": self._plain_config(), "environment": run_environment(self.trainer)}
            path = write_new(self.run_dir(), f"{stage}-", ".json", json.dumps(out, indent=2))
            if stage == "test":
                self._write_test_ranks(path)
            print(f"[zoo] wrote {path}")
            return path
        return None

    def after_validate(self) -> None:
        self._write_metrics("validate", self.trainer.callback_metrics and [dict(self.trainer.callback_metrics)])

    def after_test(self) -> None:
        self._write_metrics("test", [dict(self.trainer.callback_metrics)])

    def after_fit(self) -> None:
        cfg = self._cfg()
        if not cfg.get("test_after_fit", True) or self.trainer.interrupted:
            return
        ckpt = "best" if self.trainer.checkpoint_callback and self.trainer.checkpoint_callback.best_model_path else None
        results = self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt)
        if self.trainer.is_global_zero and results:
            out = {
                "test": {k: float(v) for k, v in results[0].items()},
                "best_checkpoint": self.trainer.checkpoint_callback.best_model_path if ckpt else None,
                "best_val": float(self.trainer.checkpoint_callback.best_model_score)
                if ckpt and self.trainer.checkpoint_callback.best_model_score is not None
                else None,
                "epochs": self.trainer.current_epoch,
                "config": self._plain_config(),
                "environment": run_environment(self.trainer),
            }
            self._write_test_ranks(self.run_dir() / "test_metrics.json")
            atomic_write(self.run_dir() / "test_metrics.json", json.dumps(out, indent=2))
            print(f"[zoo] test metrics of {out['best_checkpoint'] or 'the last weights'}:")
            for k in sorted(out["test"]):
                print(f"[zoo]   {k:<16} {out['test'][k]:.4f}")


CLEAR_ERRORS = (FileNotFoundError, FileExistsError, ValueError, KeyError, FloatingPointError, NotADirectoryError, PermissionError)


def run_cli(args: list[str] | None = None, callbacks: list[Callback] | None = None) -> ZooCLI:
    """Parse ``args`` (default ``sys.argv``) and run; ``callbacks`` are added to the trainer (``zoo tune``'s pruning)."""
    return ZooCLI(
        SequentialRecommender,
        SequentialDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=RunConfig,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"use_distributed_sampler": False, **({"callbacks": list(callbacks)} if callbacks else {})},
        args=args,
        auto_configure_optimizers=False,
        parser_kwargs={"exit_on_error": False},
    )


def clear_message(e: BaseException) -> str:
    """One readable message from jsonargparse's nested union errors (drop the noise, keep causes)."""
    msg = str(e)
    noise = ("Given value", "Subtypes:", "Errors:", "Expected a <class 'NoneType'>",
             "Does not validate against any of the Union subtypes", "Problem with given class_path")
    keep = []
    for line in msg.splitlines():
        t = line.strip().removeprefix("- ").strip()
        if t and not any(t.startswith(n) or n in t for n in noise):
            keep.append(t)
    return "; ".join(dict.fromkeys(keep)).replace(":; ", ": ") or msg.splitlines()[0]


def name_bad_yaml(argv: list[str]) -> str | None:
    """The first ``--config`` file that is not valid YAML, with the parser's line and column."""
    import yaml

    files = [v.split("=", 1)[1] if "=" in v else (argv[i + 1] if i + 1 < len(argv) else "")
             for i, v in enumerate(argv) if v in ("--config", "-c") or v.startswith("--config=")]
    for f in files:
        try:
            with open(f, encoding="utf-8") as fh:
                yaml.safe_load(fh)
        except yaml.YAMLError as e:
            return f"recipe {f} is not valid YAML: " + " ".join(str(e).split())
        except OSError:
            continue
    return None


def main(argv: list[str] | None = None) -> int:
    explicit = argv is not None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "data":
        from zoo.data_cli import data_main

        return data_main(argv[1:])
    ok = False
    try:
        if "--run" in argv or any(a.startswith("--run=") for a in argv):
            argv, explicit = expand_run_flag(argv), True
        run_cli(argv if explicit else None)
        ok = True
    except SIGTERMException:  # a SystemExit without a code: it would exit 0, as if the fit had finished
        by = STOP_REQUESTED_BY or "SIGTERM"
        print(f"zoo: stopped by {by} (a fit keeps last.ckpt at the step it reached: `--ckpt_path last` resumes it)",
              file=sys.stderr)
        return 128 + (signal.SIGINT if by == "Ctrl-C" else signal.SIGTERM)
    except (ArgumentError, RunFolderBusy, *CLEAR_ERRORS) as e:
        if os.environ.get("ZOO_DEBUG"):
            raise
        kind = "recipe" if isinstance(e, ArgumentError) else type(e).__name__
        msg = (isinstance(e, ArgumentError) and "Problems parsing config" in str(e) and name_bad_yaml(argv)) or clear_message(e)
        print(f"zoo: error ({kind}): {msg}\n(set ZOO_DEBUG=1 for the full traceback)", file=sys.stderr)
        return 2 if isinstance(e, ArgumentError) else 1
    finally:
        RunGuard.finish_all(ok)
    return 0


def expand_run_flag(argv: list[str]) -> list[str]:
    """``zoo test|validate|predict --run DIR`` -> ``--config DIR/config.yaml --ckpt_path DIR/best.ckpt
    --run_dir DIR`` (the run's saved config; its best checkpoint unless ``--ckpt_path`` is given; outputs
    in DIR even when the run was fitted elsewhere, unless ``--run_dir`` is given).  Runs saved before
    config.yaml was written to the run folder are read from ``DIR/logs/version_0/config.yaml``."""
    if not argv or argv[0] not in ("test", "validate", "predict"):
        raise ValueError("--run DIR is an option of `zoo test`, `zoo validate` and `zoo predict` (a fit writes "
                         "into --run_dir)")
    out, folder, i = [argv[0]], None, 1
    while i < len(argv):
        a = argv[i]
        if a == "--run":
            if i + 1 >= len(argv):
                raise ValueError("--run needs a run folder")
            folder, i = Path(argv[i + 1]), i + 2
            continue
        if a.startswith("--run="):
            folder, i = Path(a.split("=", 1)[1]), i + 1
            continue
        out.append(a)
        i += 1
    if not folder.is_dir():
        raise FileNotFoundError(f"--run '{folder}': no such run folder")
    config = next((c for c in (folder / "config.yaml", folder / "logs" / "version_0" / "config.yaml") if c.is_file()), None)
    if config is None:
        raise FileNotFoundError(f"--run '{folder}': no config.yaml in the folder (is it the --run_dir of a `zoo fit`?)")
    given_ckpt = any(a == "--ckpt_path" or a.startswith("--ckpt_path=") for a in out)
    if not given_ckpt and not (folder / "best.ckpt").is_file():
        raise FileNotFoundError(f"--run '{folder}': no best.ckpt in the folder (pass --ckpt_path to choose a checkpoint)")
    extra = [] if given_ckpt else ["--ckpt_path", str(folder / "best.ckpt")]
    if not any(a == "--run_dir" or a.startswith("--run_dir=") for a in out):
        extra += ["--run_dir", str(folder)]  # the saved config names the folder it was fitted in: a moved or
        # copied run (another machine, an archive) writes its outputs here, not there
    return [out[0], "--config", str(config), *extra, *out[1:]]


if __name__ == "__main__":
    sys.exit(main())
