"""Resume after a real SIGKILL: `zoo fit --ckpt_path last` ends where an uninterrupted run ends.

What is exact, and why:

* Resuming from the run's ``last.ckpt`` (written at every epoch end) after the process was killed
  in the middle of the next epoch gives the same final weights and the same test metrics, bit
  for bit: weights, optimiser and loop counters come from the checkpoint, the training order is
  ``seed + epoch`` (``EpochBatchSampler``), and the CLI's ``EpochSeed`` callback re-seeds dropout
  and sampling at each epoch's first batch from ``(seed_everything, epoch, rank)`` (Lightning does
  not checkpoint the random generators).
* Resuming from a MID-epoch checkpoint is exact too: the training loader
  (``datamodules.base.ResumableLoader``) checkpoints ``(epoch, batches yielded)`` and, when
  Lightning restarts inside an epoch, starts that epoch's seeded permutation after those batches;
  the random generators of mid-epoch checkpoints are saved and restored by ``EpochSeed``.  With
  ``--last_every_n_steps N`` the CLI refreshes ``last.ckpt`` every N steps, so ``--ckpt_path last``
  after a kill resumes inside the epoch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from test_cli import ROOT, ZOO, tiny_data_args, zoo

EVERY = 3  # a step checkpoint every EVERY optimiser steps (steps/<step>.ckpt)


def fit_args(ml: Path, cache: Path, run: Path) -> list[str]:
    return ["fit", "--config", "recipes/sasrec.yaml", *tiny_data_args(ml, cache),
            "--data.init_args.batch_size", "4",  # ~20 small steps an epoch: room to land a kill mid-epoch
            "--model.init_args.d", "16", "--model.init_args.max_len", "10",  # dropout stays at the recipe's 0.2
            "--trainer.max_epochs", "3", "--patience", "0", "--run_dir", str(run),
            "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
            f"--trainer.callbacks.dirpath={run / 'steps'}", f"--trainer.callbacks.every_n_train_steps={EVERY}",
            "--trainer.callbacks.save_top_k=-1", "--trainer.callbacks.filename={step}",
            "--trainer.callbacks.auto_insert_metric_name=false"]


def mid_step(steps_per_epoch: int) -> int:
    """A step checkpoint a few steps into epoch 1 (a multiple of EVERY)."""
    return (steps_per_epoch // EVERY + 2) * EVERY


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def same_weights(a: Path, b: Path) -> bool:
    sa, sb = load(a)["state_dict"], load(b)["state_dict"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def uninterrupted(ml_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("resume")
    run = out / "straight"
    r = zoo(*fit_args(ml_folder, out / "cache", run))
    assert r.returncode == 0, r.stderr[-3000:]
    steps_per_epoch = load(run / "last.ckpt")["global_step"] // 3
    assert steps_per_epoch < mid_step(steps_per_epoch) < 2 * steps_per_epoch - EVERY, steps_per_epoch
    return out, run, steps_per_epoch


@pytest.mark.parametrize("last_every", [0, EVERY], ids=["last-at-epoch-end", "last-every-3-steps"])
def test_sigkill_mid_epoch_then_resume_last_is_exact(uninterrupted, ml_folder, last_every):
    out, straight, spe = uninterrupted
    run = out / f"killed-{last_every}"
    args = fit_args(ml_folder, out / "cache", run) + ["--last_every_n_steps", str(last_every)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([ZOO, *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    mid = run / "steps" / f"{mid_step(spe)}.ckpt"  # written a few steps into epoch 1
    deadline = time.monotonic() + 300
    while not mid.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert mid.exists()
    assert not (run / "test_metrics.json").exists()
    if last_every:  # last.ckpt was refreshed inside epoch 1: the resume starts mid-epoch
        assert spe < load(run / "last.ckpt")["global_step"] < 2 * spe
    else:  # killed mid-epoch: steps past the epoch-end last.ckpt were done and are lost
        assert load(run / "last.ckpt")["global_step"] == spe < load(mid)["global_step"]

    r = zoo(*args, "--ckpt_path", "last")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"Restoring states from the checkpoint path at {run / 'last.ckpt'}" in r.stdout + r.stderr
    a = json.loads((straight / "test_metrics.json").read_text())
    b = json.loads((run / "test_metrics.json").read_text())
    assert a["test"] == b["test"] and a["best_val"] == b["best_val"] and a["epochs"] == b["epochs"] == 3
    assert load(straight / "last.ckpt")["global_step"] == load(run / "last.ckpt")["global_step"] == 3 * spe
    assert same_weights(straight / "last.ckpt", run / "last.ckpt")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_sigterm_or_ctrl_c_mid_epoch_writes_last_there_and_resume_is_exact(uninterrupted, ml_folder, sig):
    """SIGTERM (a scheduler's pre-emption, ``zoo reproduce`` stopping a fit) or a first Ctrl-C ends the
    fit at the next batch boundary and ``LastAtStop`` writes ``last.ckpt`` there, without
    ``--last_every_n_steps``: the resume starts inside the epoch and still ends exactly where the
    uninterrupted run ends.  The exit status is the signal's (143, 130), never 0."""
    out, straight, spe = uninterrupted
    run = out / sig.name
    args = fit_args(ml_folder, out / "cache", run)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([ZOO, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    mid = run / "steps" / f"{mid_step(spe)}.ckpt"
    deadline = time.monotonic() + 300
    while not mid.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(sig)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 128 + sig, (proc.returncode, log[-2000:])  # not 0: the fit did not finish
    stopped = load(run / "last.ckpt")["global_step"]
    assert mid_step(spe) <= stopped < 2 * spe, (stopped, spe, log[-2000:])  # inside epoch 1, past the mid checkpoint
    assert f"stopped by {'SIGTERM' if sig == signal.SIGTERM else 'Ctrl-C'} at step {stopped}" in log
    assert not (run / "test_metrics.json").exists()

    r = zoo(*args, "--ckpt_path", "last")
    assert r.returncode == 0, r.stderr[-3000:]
    a = json.loads((straight / "test_metrics.json").read_text())
    b = json.loads((run / "test_metrics.json").read_text())
    assert a["test"] == b["test"] and a["best_val"] == b["best_val"] and a["epochs"] == b["epochs"] == 3
    assert load(run / "last.ckpt")["global_step"] == 3 * spe
    assert same_weights(straight / "last.ckpt", run / "last.ckpt")


def test_resume_from_mid_epoch_checkpoint_is_exact(uninterrupted, ml_folder):
    out, straight, spe = uninterrupted
    run = out / "from_mid"
    r = zoo(*fit_args(ml_folder, out / "cache", run), "--ckpt_path", str(straight / "steps" / f"{mid_step(spe)}.ckpt"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert load(run / "last.ckpt")["global_step"] == 3 * spe  # the step count is right either way
    assert same_weights(straight / "last.ckpt", run / "last.ckpt")


def test_a_run_folder_moved_to_another_machine_resumes_with_its_best_checkpoint_kept(tmp_path):
    """``zoo reproduce --archive-unfinished`` resumes a fit in another folder than the one it was
    checkpointed in.  Lightning 2.6's ModelCheckpoint then drops the best score and the top-k record
    (it warns "The dirpath has changed"), so the next validation would overwrite ``best.ckpt`` with a
    worse epoch; the CLI's checkpoint callbacks re-root the saved paths to the new folder instead."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from zoo.cli import BestCheckpoint, EpochLastCheckpoint

    old, new = tmp_path / "old-machine" / "SASRec-s0", tmp_path / "new-machine" / "SASRec-s0"
    saved_in_old = BestCheckpoint(dirpath=old, filename="best", monitor="val/ndcg@10", mode="max",
                                  enable_version_counter=False, auto_insert_metric_name=False)
    saved_in_old.best_k_models = {str(old / "best.ckpt"): torch.tensor(0.30)}
    saved_in_old.best_model_path, saved_in_old.best_model_score = str(old / "best.ckpt"), torch.tensor(0.30)
    saved_in_old.kth_best_model_path, saved_in_old.kth_value = str(old / "best.ckpt"), torch.tensor(0.30)
    state = saved_in_old.state_dict()

    plain = ModelCheckpoint(dirpath=new, filename="best", monitor="val/ndcg@10", mode="max")
    with pytest.warns(UserWarning, match="dirpath has changed"):
        plain.load_state_dict(dict(state))
    assert plain.best_model_score is None and plain.best_k_models == {}  # what Lightning alone does

    best = BestCheckpoint(dirpath=new, filename="best", monitor="val/ndcg@10", mode="max",
                          enable_version_counter=False, auto_insert_metric_name=False)
    assert best.state_key == plain.state_key  # checkpoints from before the class existed restore into it
    best.load_state_dict(dict(state))
    assert float(best.best_model_score) == pytest.approx(0.30)
    assert best.best_model_path == best.kth_best_model_path == str(new / "best.ckpt")
    assert list(best.best_k_models) == [str(new / "best.ckpt")]
    from types import SimpleNamespace

    one_process = SimpleNamespace(strategy=SimpleNamespace(reduce_boolean_decision=lambda decision, **kw: decision))
    assert not best.check_monitor_top_k(one_process, torch.tensor(0.25))  # a worse epoch does not replace best.ckpt
    assert best.check_monitor_top_k(one_process, torch.tensor(0.35))
    assert plain.check_monitor_top_k(one_process, torch.tensor(0.25))  # ... which it would with Lightning's state

    last = EpochLastCheckpoint(new)
    last_state = EpochLastCheckpoint(old).state_dict() | {"last_model_path": str(old / "last.ckpt")}
    last.load_state_dict(last_state)
    assert last.last_model_path == str(new / "last.ckpt")


def test_checkpoints_are_staged_beside_their_target_and_published_whole(ml_folder, tmp_path, monkeypatch):
    """Every checkpoint a fit writes is staged in the run folder and renamed into place: never in the
    system temporary folder (Lightning's own writer stages there and, across file systems, copies into
    the target, so a kill mid-copy truncates last.ckpt). A write that fails half-way leaves the
    previous checkpoint byte-identical and no temporary file."""
    import tempfile

    import zoo.cli as C
    import zoo.runfiles as RF

    systmp = tmp_path / "systmp"
    systmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(systmp))
    moves: list[tuple[Path, Path]] = []
    real_replace = os.replace

    def recording_replace(src, dst):
        moves.append((Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(RF.os, "replace", recording_replace)
    run = tmp_path / "run"
    cli = C.run_cli(["fit", "--config", str(ROOT / "recipes" / "sasrec.yaml"), *tiny_data_args(ml_folder, tmp_path / "cache"),
                     "--model.init_args.d", "8", "--model.init_args.max_len", "10", "--trainer.max_epochs", "2", "--patience", "0",
                     "--test_after_fit", "false", "--run_dir", str(run)])
    assert isinstance(cli.trainer.strategy.checkpoint_io, C.AtomicCheckpointIO)
    published = [(src, dst) for src, dst in moves if dst.suffix == ".ckpt"]
    assert {dst.name for _, dst in published} == {"best.ckpt", "last.ckpt"}
    assert all(src.parent == dst.parent == run for src, dst in published)
    assert not list(systmp.iterdir())
    load(run / "last.ckpt")  # whole

    before = (run / "last.ckpt").read_bytes()

    def torch_save_then_disk_full(obj, f):
        f.write(b"\0" * 1000)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(C.torch, "save", torch_save_then_disk_full)
    with pytest.raises(OSError, match="No space left"):
        cli.trainer.save_checkpoint(run / "last.ckpt")
    assert (run / "last.ckpt").read_bytes() == before
    assert sorted(p.name for p in run.iterdir() if p.name.endswith(".tmp")) == []


def test_a_configured_checkpoint_io_and_callback_are_kept(ml_folder, tmp_path):
    """A recipe's own ``trainer.plugins`` CheckpointIO replaces the zoo's atomic writer, and its
    ``trainer.callbacks`` stay beside the zoo's (the zoo appends its own; it never replaces them)."""
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.plugins import TorchCheckpointIO

    import zoo.cli as C

    cli = C.run_cli(["fit", "--config", str(ROOT / "recipes" / "sasrec.yaml"), *tiny_data_args(ml_folder, tmp_path / "cache"),
                     "--model.init_args.d", "8", "--model.init_args.max_len", "10", "--trainer.max_epochs", "1",
                     "--patience", "0", "--test_after_fit", "false", "--run_dir", str(tmp_path / "run"),
                     "--trainer.plugins=lightning.pytorch.plugins.TorchCheckpointIO",
                     "--trainer.callbacks+=lightning.pytorch.callbacks.LearningRateMonitor"])
    io = cli.trainer.strategy.checkpoint_io
    assert isinstance(io, TorchCheckpointIO) and not isinstance(io, C.AtomicCheckpointIO)
    kinds = [type(c) for c in cli.trainer.callbacks]
    assert LearningRateMonitor in kinds and C.LastAtStop in kinds and C.EpochSeed in kinds
    assert (tmp_path / "run" / "last.ckpt").exists()


def test_a_second_ctrl_c_interrupts_at_once_and_the_handler_is_restored(tmp_path):
    """LastAtStop's SIGINT handler: the first Ctrl-C sets Lightning's stop flag (the fit ends at the next
    batch boundary), the second raises KeyboardInterrupt on the spot; teardown puts back the handler
    that was there before the fit."""
    from types import SimpleNamespace

    import zoo.cli as C

    before = signal.getsignal(signal.SIGINT)
    trainer = SimpleNamespace(_signal_connector=SimpleNamespace(received_sigterm=False), is_global_zero=True)
    cb = C.LastAtStop(tmp_path)
    cb.on_fit_start(trainer, None)
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert trainer._signal_connector.received_sigterm and C.STOP_REQUESTED_BY == "Ctrl-C"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
    finally:
        cb.teardown(trainer, None, "fit")
    assert signal.getsignal(signal.SIGINT) is before
