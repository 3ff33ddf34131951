"""``zoo`` with one callback more: the training epoch's wall and CPU seconds and mean loss.

    ZOO_EPOCH_OUT=RUN/epoch.json python -m benchmarks.peers.authors.zoo_epoch fit --config recipes/miracle.yaml ...

The timed span is the one ``driver.py`` times on the authors' side: from the epoch's start to its
last training batch's end (data loading, forward, backward, optimiser step), without the
validation and test that follow.  CPU seconds are the process's (``time.process_time``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class EpochClock(Callback):
    """Per training epoch: wall and process-CPU seconds, steps and mean training loss."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.epochs: list[dict] = []
        self._t = self._c = self._t_last = self._c_last = 0.0
        self._losses: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._t_last = self._t = time.perf_counter()
        self._c_last = self._c = time.process_time()
        self._losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None:
            self._losses.append(float(loss.detach()))
        self._t_last, self._c_last = time.perf_counter(), time.process_time()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        import torch

        self.epochs.append({"epoch": trainer.current_epoch, "train_wall_s": self._t_last - self._t,
                            "train_cpu_s": self._c_last - self._c, "steps": len(self._losses),
                            "mean_loss": sum(self._losses) / max(len(self._losses), 1),
                            "threads": torch.get_num_threads()})
        from zoo.runfiles import atomic_write

        atomic_write(self.out, json.dumps({"side": "zoo", "epochs": self.epochs}, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    from zoo.cli import ZooCLI
    from zoo.entry import main as zoo_main

    out = os.environ.get("ZOO_EPOCH_OUT")
    if not out:
        raise SystemExit("set ZOO_EPOCH_OUT to the JSON file the epoch times go to")
    original = ZooCLI.instantiate_trainer

    def with_clock(self, **kwargs):
        kwargs["callbacks"] = [EpochClock(out)] + list(kwargs.get("callbacks") or [])
        return original(self, **kwargs)

    ZooCLI.instantiate_trainer = with_clock
    return zoo_main(argv)


if __name__ == "__main__":
    sys.exit(main())
