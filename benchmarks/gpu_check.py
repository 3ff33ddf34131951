"""Every model on GPUs once: 1 and 2 GPUs (DDP), fp32 / bf16-mixed, torch.compile off / on.

Each cell (model x setting) is one ``zoo fit`` of its recipe on the embedded default, capped at
``--steps`` optimiser steps with no validation, followed by the fit's test evaluation of the
final weights (one full-ranking pass over the test users).  A :class:`Probe` callback inside
the run measures training steps/s (after ``--warmup`` steps, so compilation is excluded), the
evaluation time, the final training loss, the peak GPU memory (rank 0) and the test metric.
A failing cell is recorded as such and the table goes on (fail soft); the table is rewritten
atomically after every cell, so an interrupted check keeps what it measured.

    bash benchmarks/gpu_check.sh                       # everything the machine's GPUs allow
    bash benchmarks/gpu_check.sh --models sasrec horae --steps 200
    bash benchmarks/gpu_check.sh --cpu-smoke           # code path check on CPU (a couple of steps)
    bash benchmarks/gpu_check.sh --jobs 8              # 8 one-GPU cells at a time (a short lease): steps/s shared
    bash benchmarks/gpu_check.sh --modes eager --devices 1 --models horae miracle   # solo timings only

``--jobs N`` runs N cells at once (each with ``cpus // N`` CPU threads); cells then share the GPU and
the CPU, so their steps/s are lower bounds, and the table says so.  DDP cells always run alone.

Pre-trained models (MIRACLE, HORAE, TiMiRec): the pre-training recipe and the fine-tuning
recipe are separate rows; fine-tuning starts from scratch here (``pretrained_ckpt: null``), a
speed/placement check, not a result.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]
PROBE_ENV = "ZOO_GPU_CHECK_PROBE"  # where the Probe of a run writes its JSON
WARMUP_ENV = "ZOO_GPU_CHECK_WARMUP"  # steps the Probe leaves out of steps/s

# row name -> (recipe, extra overrides)
FROM_SCRATCH = ["--model.init_args.pretrained_ckpt", "null", "--model.init_args.freeze", "[]"]
MODELS: dict[str, tuple[str, list[str]]] = {
    "pop": ("pop", []),
    "sasrec": ("sasrec", []),
    "tisasrec": ("tisasrec", []),
    "gru4rec": ("gru4rec", []),
    "comirec_sa": ("comirec_sa", []),
    "comirec_dr": ("comirec_dr", []),
    "comirec_sa_plus": ("comirec_sa_plus", []),
    "mind": ("mind", []),
    "miracle_pretrain": ("miracle_pretrain", []),
    "miracle": ("miracle", FROM_SCRATCH),
    "horae_pretrain": ("horae_pretrain", []),
    "horae": ("horae", FROM_SCRATCH),
    "timirec_pretrain": ("timirec_pretrain", []),
    "timirec": ("timirec", FROM_SCRATCH),
    "timirec_plus": ("timirec_plus", FROM_SCRATCH),
    "hpcl4sr": ("hpcl4sr", []),
    "hm4sr": ("hm4sr", []),
}


@dataclass(frozen=True)
class Setting:
    devices: int
    precision: str  # "32-true" | "bf16-mixed"
    compile: bool
    cpu: bool = False

    @property
    def name(self) -> str:
        where = f"{self.devices} CPU proc" if self.cpu else f"{self.devices} GPU" + ("s" if self.devices > 1 else "")
        return f"{where}, {'bf16' if self.precision == 'bf16-mixed' else 'fp32'}, {'compile' if self.compile else 'eager'}"


SETTINGS = [Setting(d, p, c) for d in (1, 2) for p in ("32-true", "bf16-mixed") for c in (False, True)]


def gpu_settings(precisions: list[str], modes: list[str], devices: list[int]) -> list[Setting]:
    """The GPU cells' settings asked for, in the table's order (devices, precision, eager before compile)."""
    return [s for s in SETTINGS if s.precision in precisions and s.devices in devices
            and ("compile" if s.compile else "eager") in modes]


class Probe(L.Callback):
    """Timings, loss, peak memory and test metrics of one run, written as JSON to ``$ZOO_GPU_CHECK_PROBE``."""

    def __init__(self) -> None:
        self.warmup, self.out = max(1, int(os.environ.get(WARMUP_ENV, "10"))), os.environ.get(PROBE_ENV)
        self.steps, self.t_warm, self.t_end, self.loss = 0, None, None, None
        self.eval_s, self.t_eval = None, None

    def _sync(self, pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_start(self, trainer, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps += 1
        if self.steps == self.warmup:
            self._sync(pl_module)
            self.t_warm = (self.steps, time.perf_counter())
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None:
            self.loss = loss

    def on_train_end(self, trainer, pl_module) -> None:
        self._sync(pl_module)
        self.t_end = time.perf_counter()

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._sync(pl_module)
        self.t_eval = time.perf_counter()

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._sync(pl_module)
        self.eval_s = time.perf_counter() - self.t_eval

    def on_test_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or not self.out:
            return
        steps_per_s = None
        if self.t_warm is not None and self.t_end is not None and self.steps > self.t_warm[0]:
            steps_per_s = (self.steps - self.t_warm[0]) / (self.t_end - self.t_warm[1])
        cuda = pl_module.device.type == "cuda"
        result = {
            "steps": self.steps,
            "steps_per_s": steps_per_s,
            "eval_s": self.eval_s,
            "final_loss": None if self.loss is None else float(self.loss),
            "peak_mem_gib": torch.cuda.max_memory_allocated(pl_module.device) / 2**30 if cuda else None,
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")},
        }
        tmp = Path(self.out).with_suffix(".tmp")
        tmp.write_text(json.dumps(result))
        os.replace(tmp, self.out)


def zoo_command() -> str:
    """The ``zoo`` console script of this interpreter's environment (DDP re-launches it)."""
    beside = Path(sys.executable).parent / "zoo"
    found = str(beside) if beside.is_file() else shutil.which("zoo")
    if not found:
        raise SystemExit("[gpu_check] no `zoo` command: install the package (pip install -e .) in this environment")
    return found


def run_cell(model: str, setting: Setting, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    recipe, extra = MODELS[model]
    run_dir = work / f"{model}-{setting.devices}-{setting.precision}-{'c' if setting.compile else 'e'}"
    probe = run_dir.with_suffix(".json")
    probe.unlink(missing_ok=True)
    shutil.rmtree(run_dir, ignore_errors=True)  # the check's own folder: a rerun starts afresh, not "already holds a run"
    cmd = [
        zoo_command(), "fit", "--config", str(ROOT / "recipes" / f"{recipe}.yaml"), *extra,
        "--run_dir", str(run_dir), "--patience", "0", "--trainer.max_steps", str(args.steps),
        "--trainer.max_epochs", "-1" if model != "pop" else "0",
        "--trainer.check_val_every_n_epoch", "1000000", "--trainer.num_sanity_val_steps", "0",
        "--trainer.accelerator", "cpu" if args.cpu_smoke else "gpu", "--trainer.devices", str(setting.devices),
        "--trainer.precision", setting.precision, "--trainer.enable_progress_bar", "false",
        "--trainer.callbacks+=benchmarks.gpu_check.Probe",
        "--compile", "default" if setting.compile else "off",  # eager cells stay eager whatever the recipe says
        *(["--trainer.strategy", "ddp"] if setting.devices > 1 else []),
        *args.extra,
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), **{PROBE_ENV: str(probe), WARMUP_ENV: str(args.warmup)})
    if args.jobs > 1 and "OMP_NUM_THREADS" not in os.environ:  # N cells at once share the cores
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.jobs))
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.cell_timeout)
        rc, log = r.returncode, r.stdout + r.stderr
    except subprocess.TimeoutExpired as e:
        rc, log = "timeout", f"{e.stdout or ''}{e.stderr or ''}\ntimed out after {args.cell_timeout} s"
    wall = time.perf_counter() - t0
    (run_dir.parent / f"{run_dir.name}.log").write_text(" ".join(cmd) + "\n\n" + (log if isinstance(log, str) else str(log)))
    out: dict[str, Any] = {"wall_s": wall, "rc": rc}
    if probe.is_file():
        out.update(json.loads(probe.read_text()))
    if rc != 0 or not probe.is_file():
        lines = [ln.strip() for ln in str(log).splitlines() if ln.strip()]
        errs = [ln for ln in lines if ("error" in ln.lower() or "timed out" in ln) and "ZOO_DEBUG" not in ln]
        out["error"] = (errs or lines or ["no output"])[-1][:160]
    return out


def fmt(v: Any, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def write_table(path: Path, rows: list[tuple[str, Setting, dict[str, Any]]], header: str) -> None:
    lines = [header, "", "| model | setting | steps/s | eval s | final loss | metric | peak GPU GiB | status |",
             "|---|---|---:|---:|---:|---|---:|---|"]
    for model, s, r in rows:
        m = r.get("metrics") or {}
        key = next((k for k in ("test/ndcg@10", "test/recall@20", "test/ndcg@20") if k in m), None)
        metric = f"{key.split('/')[1]} {m[key]:.4f}" if key else "–"
        status = "OK" if "error" not in r and "skipped" not in r else (r.get("skipped") or "error: " + r["error"].replace("|", "/"))
        lines.append(
            f"| {model} | {s.name} | {fmt(r.get('steps_per_s'), '.2f')} | {fmt(r.get('eval_s'), '.2f')} | "
            f"{fmt(r.get('final_loss'), '.4f')} | {metric} | {fmt(r.get('peak_mem_gib'), '.2f')} | {status} |"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--steps", type=int, default=300, help="optimiser steps per cell")
    p.add_argument("--warmup", type=int, default=20, help="steps excluded from steps/s (compilation, allocator)")
    p.add_argument("--cell-timeout", type=int, default=1800, help="seconds before a cell is recorded as timed out")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_check.md")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "gpu_check", help="run folders and logs")
    p.add_argument("--precisions", nargs="*", default=["32-true", "bf16-mixed"], choices=["32-true", "bf16-mixed"])
    p.add_argument("--modes", nargs="*", default=["eager", "compile"], choices=["eager", "compile"],
                   help="eager and/or torch.compile cells (e.g. --modes eager for quick timings)")
    p.add_argument("--devices", nargs="*", type=int, default=[1, 2], choices=[1, 2], help="1 GPU and/or 2 GPUs (DDP)")
    p.add_argument("--jobs", type=int, default=1,
                   help="one-GPU cells run at once (they share GPU and CPU: steps/s become lower bounds)")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="check the code path without a GPU: accelerator cpu, 1 process, eager, fp32 and bf16-mixed")
    p.add_argument("extra", nargs="*", help="after --: overrides passed to every zoo fit (e.g. data options)")
    args = p.parse_args(argv)
    n_gpus = torch.cuda.device_count()
    if args.cpu_smoke:
        settings = [Setting(1, prec, False, cpu=True) for prec in args.precisions]
        machine = f"CPU smoke ({platform.processor() or platform.machine()}, {os.cpu_count()} cores): NOT a GPU measurement"
    else:
        if n_gpus == 0:
            print("[gpu_check] no CUDA GPU visible (torch.cuda.device_count() == 0); use --cpu-smoke to check the code path")
            return 2
        settings = gpu_settings(args.precisions, args.modes, args.devices)
        machine = f"{n_gpus} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    header = (
        f"# GPU check\n\n{machine}; {args.steps} steps per cell (steps/s after {args.warmup} warm-up steps), then one "
        f"full-ranking test evaluation of the final weights; started {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n"
        f"Command: `bash benchmarks/gpu_check.sh {' '.join(argv if argv is not None else sys.argv[1:])}`. "
        "Single runs, no repeats: steps/s is indicative (±10 % run to run is usual)."
        + (f" **{args.jobs} cells ran at a time on the same GPU and CPU: steps/s and eval s are shared-machine "
           "figures (lower bounds on speed), not a model's own speed.**" if args.jobs > 1 else "")
    )
    plan = [(model, s) for model in args.models for s in settings]
    results: dict[int, dict[str, Any]] = {}
    lock = threading.Lock()  # cells finish in any order; the table is rewritten under the lock

    def cell(i: int) -> None:
        model, s = plan[i]
        if not args.cpu_smoke and s.devices > n_gpus:
            results[i] = {"skipped": f"skipped: {n_gpus} GPU(s) visible"}
            return
        print(f"[gpu_check] {model} / {s.name} ...", flush=True)
        r = run_cell(model, s, args, args.work)
        print(f"[gpu_check]   {model} / {s.name}: {'OK' if 'error' not in r else 'ERROR ' + r['error']} ({r['wall_s']:.0f} s)", flush=True)
        with lock:
            results[i] = r
            write_table(args.out, [(*plan[j], results[j]) for j in sorted(results)], header)

    args.work.mkdir(parents=True, exist_ok=True)
    # one-GPU cells, eager ones first: a lease that ends early has checked every model once
    single = sorted((i for i, (_, s) in enumerate(plan) if s.devices == 1), key=lambda i: plan[i][1].compile)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:  # N at a time
        list(pool.map(cell, single))
    for i in range(len(plan)):  # DDP cells use every GPU: one at a time, after the rest
        if i not in results:
            cell(i)
    rows = [(*plan[i], results[i]) for i in range(len(plan))]
    write_table(args.out, rows, header)
    failed = sum("error" in r for _, _, r in rows)
    print(f"[gpu_check] {len(rows)} cells, {failed} failed -> {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
