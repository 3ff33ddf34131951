"""A Lightning callback that times a real ``zoo fit`` / ``zoo test`` run, phase by phase.

Attached to the real CLI by ``python -m benchmarks.zoo_timed fit --config ...`` (the zoo CLI
currently drops ``--trainer.callbacks``; see ``benchmarks/zoo_timed.py``), or passed to a
``Trainer`` directly.

It records, per training epoch, the training time (epoch start -> last training batch end:
data loading, forward, backward, optimiser; the validation that Lightning runs at the end of
the epoch is timed separately) and the number of steps; each validation and test loop's wall
time; and the resident-memory high-water mark of the test loop alone (``VmHWM`` reset when the
test starts) next to the resident size before it.  Written as JSON to ``$ZOO_SPEED_OUT`` after
every loop, through a temporary file + rename.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

from benchmarks.speed_common import dump_json, peak_bytes, reset_peak, rss_bytes


class PhaseTimer(Callback):
    """Per-epoch training time, validation/test wall times and the test loop's peak RSS."""

    def __init__(self, out: str | None = None) -> None:
        self.out = Path(out or os.environ.get("ZOO_SPEED_OUT", "speed_timer.json"))
        self.rec: dict[str, Any] = {"epochs": [], "val": [], "test": [], "train_steps": [], "train_steps_cpu": []}
        self._t_epoch = self._t_last = self._t_val = self._t_test = self._t_step = self._c_step = 0.0
        self._steps = 0
        self._rss0 = 0

    def _save(self) -> None:
        dump_json(self.out, self.rec)

    # ---------------------------------------------------------------- training
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._t_epoch = self._t_last = time.perf_counter()
        self._steps = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t_step, self._c_step = time.perf_counter(), time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        self._steps += 1
        self._t_last = now
        if len(self.rec["train_steps"]) < 10_000:
            self.rec["train_steps"].append(now - self._t_step)
            self.rec["train_steps_cpu"].append(time.process_time() - self._c_step)  # this process, all threads

    def on_validation_start(self, trainer, pl_module) -> None:
        self._t_val = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        self.rec["val"].append({"seconds": time.perf_counter() - self._t_val,
                                "batches": int(sum(trainer.num_val_batches))})
        self._save()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.rec["epochs"].append({"epoch": trainer.current_epoch, "train_s": self._t_last - self._t_epoch,
                                   "steps": self._steps})
        self._save()

    # ---------------------------------------------------------------- test
    def on_test_start(self, trainer, pl_module) -> None:
        self._rss0 = rss_bytes()
        self._test_batches: list[float] = []
        reset_peak()
        self._t_test = time.perf_counter()

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._t_batch = time.perf_counter()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._test_batches.append(time.perf_counter() - self._t_batch)

    def on_test_end(self, trainer, pl_module) -> None:
        seconds = time.perf_counter() - self._t_test
        self.rec["test"].append({"seconds": seconds, "rss_before_bytes": self._rss0,
                                 "peak_rss_bytes": peak_bytes(), "batches": int(sum(trainer.num_test_batches)),
                                 "batch_s": self._test_batches})
        self._save()
