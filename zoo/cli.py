"""The ``zoo`` command: one YAML recipe per experiment.

    zoo fit --config recipes/sasrec.yaml          # train, early-stop, test the best checkpoint
    zoo test --config recipes/sasrec.yaml --ckpt_path runs/sasrec/best.ckpt
    zoo fit --config recipes/sasrec.yaml --ckpt_path last     # resume an interrupted run
    zoo data prepare --format movielens --path ml-1m/ --k 5   # process + summarise a dataset
    zoo data stats ~/.cache/zoo/<dataset>-<key>

``ZooCLI`` is a ``LightningCLI``: the recipe picks the model and datamodule by ``class_path``;
``data.num_items`` and ``data.info`` (the processed cache's stats) are linked into the model when
it is built.  Top-level recipe keys beyond Lightning's: ``monitor``, ``monitor_mode``,
``patience``, ``test_after_fit``, ``run_dir``, ``wandb``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentError
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger

from datamodules.base import SequentialDataModule
from zoo.models.base import SequentialRecommender


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class ZooCLI(LightningCLI):
    """LightningCLI with the zoo's links, default callbacks, run directory and test-after-fit."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--monitor", type=str, default="val/ndcg@10", help="validation metric for checkpointing and early stopping")
        parser.add_argument("--monitor_mode", type=str, default="max", help="max or min")
        parser.add_argument("--patience", type=int, default=5, help="early-stopping patience in validation rounds (0 = off)")
        parser.add_argument("--test_after_fit", type=bool, default=True, help="test the best checkpoint after fit")
        parser.add_argument("--run_dir", type=str | None, default=None, help="output folder (default runs/<recipe name>)")
        parser.add_argument("--wandb", type=str, default="off", help="W&B logging: off, offline or online (WANDB_MODE overrides)")
        parser.link_arguments("data.num_items", "model.init_args.num_items", apply_on="instantiate")
        parser.link_arguments("data.info", "model.init_args.data_info", apply_on="instantiate")

    # ------------------------------------------------------------------
    def _cfg(self) -> Any:
        return self.config[self.subcommand] if self.subcommand else self.config

    def run_dir(self) -> Path:
        cfg = self._cfg()
        if cfg.get("run_dir"):
            return Path(cfg["run_dir"])
        configs = cfg.get("config") or []
        name = Path(str(configs[0])).stem if configs else type(self.model).__name__.lower()
        return Path("runs") / name

    def instantiate_trainer(self, **kwargs: Any):
        cfg = self._cfg()
        run_dir = self.run_dir()
        callbacks = list(kwargs.pop("callbacks", []) or [])
        monitor, mode = cfg.get("monitor"), cfg.get("monitor_mode", "max")
        if self.subcommand == "fit":
            callbacks.append(
                ModelCheckpoint(dirpath=run_dir, filename="best", monitor=monitor, mode=mode, save_last=True,
                                enable_version_counter=False, auto_insert_metric_name=False)
            )
            if cfg.get("patience", 0) > 0:
                callbacks.append(EarlyStopping(monitor=monitor, mode=mode, patience=cfg["patience"]))
        trainer_cfg = cfg["trainer"]
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

    def _write_metrics(self, stage: str, results: list[dict[str, float]]) -> None:
        if self.trainer.is_global_zero and results:
            out = {stage: {k: float(v) for k, v in results[0].items()}, "config": self._plain_config()}
            atomic_write_text(self.run_dir() / f"{stage}_metrics.json", json.dumps(out, indent=2))

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
            }
            atomic_write_text(self.run_dir() / "test_metrics.json", json.dumps(out, indent=2))
            print(f"[zoo] test metrics of {out['best_checkpoint'] or 'the last weights'}:")
            for k in sorted(out["test"]):
                print(f"[zoo]   {k:<16} {out['test'][k]:.4f}")


CLEAR_ERRORS = (FileNotFoundError, ValueError, KeyError, FloatingPointError, NotADirectoryError, PermissionError)


def run_cli(args: list[str] | None = None) -> ZooCLI:
    return ZooCLI(
        SequentialRecommender,
        SequentialDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"use_distributed_sampler": False},
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


def main(argv: list[str] | None = None) -> int:
    explicit = argv is not None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "data":
        from zoo.data_cli import data_main

        return data_main(argv[1:])
    try:
        run_cli(argv if explicit else None)
    except (ArgumentError, *CLEAR_ERRORS) as e:
        if os.environ.get("ZOO_DEBUG"):
            raise
        kind = "recipe" if isinstance(e, ArgumentError) else type(e).__name__
        print(f"zoo: error ({kind}): {clear_message(e)}\n(set ZOO_DEBUG=1 for the full traceback)", file=sys.stderr)
        return 2 if isinstance(e, ArgumentError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
