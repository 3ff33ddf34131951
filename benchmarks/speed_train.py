"""Training speed of every model on the embedded default, this checkout against a baseline commit.

    python benchmarks/speed_train.py --baseline b5b8ccd            # every recipe, 3 repeats
    python benchmarks/speed_train.py --baseline b5b8ccd --recipes horae_pretrain,horae --repeats 5

For each recipe (both stages where a model has two) and each side (the baseline commit, checked
out in a temporary ``git worktree``, and this checkout), a fresh one-thread worker process builds
the model and datamodule from THAT side's recipe, exactly as ``zoo fit`` does (its ``init_args``;
``num_items`` / ``data_info`` linked from the data), and trains it with a Lightning ``Trainer``
(the recipe's gradient clipping; no validation, logger, checkpoints or progress bar).  The first
``--warmup`` steps are not timed; then steps are timed until ``--seconds`` have passed (at least
``--min_steps``).  Per step this is the real training loop: loading the batch, forward,
backward, clipping, optimizer, Lightning's logging.  Reported, median over ``--repeats``:

* sequences/s (training prefixes per CPU second) and the epoch time, EXTRAPOLATED from the
  timed steps: ``steps per epoch x CPU seconds per step``;
* achieved GFLOP/s: the FLOPs of one training step (forward + backward, counted by
  ``torch.utils.flop_counter.FlopCounterMode``: matrix products and attention only, not
  elementwise ops) per CPU second of a step, against the machine's measured peak: the best of a
  few ``[2048 x 2048] @ [2048 x 2048]`` fp32 products on one thread, also in CPU seconds.
* CPU seconds per step (the worker's ``process_time``, one thread) beside wall seconds: the
  CPU time is what a step costs on a core of its own and moves far less than the wall time when
  other jobs share the cores; the ratio is reported on both.

Sides run interleaved: for each recipe and repeat, one baseline worker and one current worker
back to back, the order alternating between repeats, so both see the same machine load and the
ratio (baseline seconds per step / current seconds per step) is measured side by side.
Fine-tuning recipes run without their ``pretrained_ckpt`` (freshly initialised weights, the
recipe's ``freeze`` list kept), which costs the same per step.  The processed data cache
(``~/.cache/zoo``) is shared by both sides; prepare it first (``zoo data``, or any ``zoo fit``).
Writes ``benchmarks/results/speed_train.md`` (``--out``) and a JSON of every run beside it.

A recipe may carry switches for the CURRENT side only, ``recipe:key=value+key=value``: keys are
the model's ``init_args`` (``adaptor_masks=item``), ``precision`` (the Trainer's, e.g.
``bf16-mixed``), ``cpu_allocator`` (``zoo fit``'s, default ``retain``: ``system`` measures
without ``zoo/allocator.py``) or ``compile`` / ``compile_scope`` / ``compile_backend`` (``zoo
fit``'s; a recipe's own top-level ``compile`` applies as in ``zoo fit``, and the untimed warm-up
steps include its compilation); the baseline side runs the plain recipe, so the ratio is the switch's speed-up
over the baseline's default (approximate switches: see the model docstrings)::

    python benchmarks/speed_train.py --recipes horae_pretrain:adaptor_masks=item,horae:precision=bf16-mixed \
        --out benchmarks/results/speed_train_switches.md

The report ends with two estimates from the profile of each step (see ``exact_floor`` and
``main_job_floor``): the exact floor of every recipe's step, and the README's main job (HORAE
pre-training + fine-tuning) at that floor on 2 cores.  ``--floor-from JSON`` prints them again
from an earlier run's JSON without measuring anything.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # benchmarks.speed_common of THIS checkout (stdlib only)
from benchmarks.speed_common import dump_json, header_md, loadavg, machine_info, write_atomic  # noqa: E402

sys.path.pop(0)

#: every model on the embedded default; both stages of MIRACLE, HORAE and TiMiRec
RECIPES = (
    "miracle_pretrain", "miracle", "horae_pretrain", "horae", "hm4sr", "hpcl4sr", "timirec_pretrain", "timirec",
    "sasrec", "tisasrec", "gru4rec", "comirec_sa", "comirec_dr", "mind",
)
#: the models of issue 13's goal (>= 3x)
PAPER = ("miracle_pretrain", "miracle", "horae_pretrain", "horae", "hm4sr", "hpcl4sr", "timirec_pretrain", "timirec")
#: the README's main job: (recipe, epochs it ran when timed end to end on 2026-11-30: pre-training's
#: fixed 3, fine-tuning early-stopped at 7), and the cores issue 13's 10-minute goal allows
MAIN_JOB = (("horae_pretrain", 3), ("horae", 7))
MAIN_JOB_CORES = 2


# ----------------------------------------------------------------------------- worker
def _cls(path: str):
    mod, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(mod), name)


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"horae:adaptor_masks=item+precision=bf16-mixed"`` -> ``("horae", {...})`` (values as YAML scalars)."""
    import yaml

    recipe, _, rest = spec.partition(":")
    switches: dict[str, Any] = {}
    for item in filter(None, rest.split("+")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise SystemExit(f"--recipes: {spec!r}: expected recipe:key=value[+key=value], got {item!r}")
        switches[key.strip()] = yaml.safe_load(value)
    return recipe, switches


def worker(spec: str, warmup: int, seconds: float, min_steps: int, out: Path) -> None:
    """One side, one recipe: time training steps of the side's own code (run with cwd and
    PYTHONPATH = that side's checkout)."""
    import lightning as L
    import torch
    import yaml
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(1)
    recipe, switches = parse_spec(spec)
    precision = switches.pop("precision", None)
    allocator = switches.pop("cpu_allocator", "retain")
    root = Path.cwd()
    cfg = yaml.safe_load((root / "recipes" / f"{recipe}.yaml").read_text(encoding="utf-8"))
    # torch.compile as `zoo fit` applies it: the recipe's own setting, unless a switch overrides it
    compile_cfg = {k: switches.pop(k, cfg.get(k)) for k in ("compile", "compile_backend", "compile_scope")}
    L.seed_everything(int(cfg.get("seed_everything", 0)), verbose=False)
    dm = _cls(cfg["data"]["class_path"])(**cfg["data"].get("init_args", {}))
    m_init = dict(cfg["model"].get("init_args", {}))
    if m_init.get("pretrained_ckpt"):
        m_init["pretrained_ckpt"] = None  # same cost per step; the recipe's freeze list is kept
    m_init.update(switches)
    model = _cls(cfg["model"]["class_path"])(num_items=dm.num_items, data_info=dm.info, **m_init)
    if compile_cfg["compile"] not in (None, "off", False):
        # scope only when asked: a baseline commit's compile_modules may predate it
        kw = {"scope": compile_cfg["compile_scope"]} if compile_cfg["compile_scope"] else {}
        model.compile_modules(str(compile_cfg["compile"]), compile_cfg["compile_backend"] or "inductor", **kw)

    times: list[float] = []
    cpu: list[float] = []  # this process's CPU seconds (one thread): robust to other jobs sharing the cores
    rows: list[int] = []

    class Clock(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # noqa: ANN001
            if batch_idx == warmup:
                self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # noqa: ANN001
            if batch_idx < warmup:
                return
            times.append(time.perf_counter())
            cpu.append(time.process_time())
            rows.append(int(batch["item_seq"].shape[0]))
            if len(times) >= min_steps and times[-1] - self.t0 >= seconds:
                trainer.should_stop = True

    clock = Clock()
    callbacks: list[L.Callback] = [clock]
    if allocator == "retain":
        try:  # what this side's `zoo fit` does by default (from 2026-12-02; older commits lack it)
            from zoo.cli import RetainFreedMemory

            callbacks.append(RetainFreedMemory())
        except ImportError:
            pass
    tr_cfg = cfg.get("trainer", {}) or {}
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        use_distributed_sampler=False, gradient_clip_val=tr_cfg.get("gradient_clip_val"), callbacks=callbacks,
        **({"precision": precision} if precision else {}),
    )
    trainer.fit(model, datamodule=dm)
    steps_per_epoch = len(dm.train_dataloader())
    n = len(times)
    if n == 0:
        raise RuntimeError(f"{recipe}: no timed step (epoch of {steps_per_epoch} steps <= warmup {warmup})")
    step_times = [b - a for a, b in zip([clock.t0] + times[:-1], times)]
    sec_per_step = statistics.median(step_times)
    cpu_per_step = (cpu[-1] - clock.c0) / n

    model.train()
    batch = next(iter(dm.train_dataloader()))
    with FlopCounterMode(display=False) as fc, torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16-mixed"):
        terms = model.training_loss(batch)
        torch.stack(list(terms.values())).sum().backward()
    flops = fc.get_total_flops()
    shares = profile_shares(model, batch, precision)
    res = dict(
        recipe=spec, steps=n, sec_per_step=sec_per_step, cpu_per_step=cpu_per_step, mean_sec_per_step=(times[-1] - clock.t0) / n,
        seq_per_s=sum(rows) / (times[-1] - clock.t0), batch_rows=statistics.median(rows),
        steps_per_epoch=steps_per_epoch, epoch_s=steps_per_epoch * sec_per_step, flops_per_step=flops,
        gflops=flops / sec_per_step / 1e9, loadavg=loadavg(), **shares,
    )
    Path(out).write_text(json.dumps(res), encoding="utf-8")


#: operators that draw random numbers (dropout masks, gate noise, sampled negatives)
RNG_OPS = ("aten::uniform_", "aten::normal_", "aten::bernoulli_", "aten::random_", "aten::exponential_",
           "aten::multinomial", "aten::randperm", "aten::geometric_", "aten::cauchy_", "aten::log_normal_")
#: matrix products (the FLOPs FlopCounterMode counts)
MATMUL_OPS = ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::addbmm",
              "aten::_scaled_dot_product_flash_attention_for_cpu",
              "aten::_scaled_dot_product_flash_attention_for_cpu_backward")


def profile_shares(model: Any, batch: dict, precision: str | None, passes: int = 2) -> dict[str, float]:
    """Shares of a training step's self CPU time (forward + backward of ``training_loss``, as
    ``torch.profiler`` sees ``passes`` of them) spent drawing random numbers and in matrix
    products: ``rng_share``, ``matmul_share`` (the rest is elementwise work, copies, indexing,
    Python).  An exact change must draw the same random numbers (the loss curve stays equal) and,
    at today's FLOPs, cannot multiply faster than the machine's peak: that is the floor
    :func:`exact_floor` reports."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(passes):
            model.zero_grad(set_to_none=True)
            with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16-mixed"):
                terms = model.training_loss(batch)
                torch.stack(list(terms.values())).sum().backward()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    share = lambda names: sum(e.self_cpu_time_total for e in events if e.key in names) / total  # noqa: E731
    return {"rng_share": share(RNG_OPS), "matmul_share": share(MATMUL_OPS)}


def exact_floor(c: dict[str, float], peak: float) -> float | None:
    """The least CPU s/step an exact change could reach: this step's random draws (the same stream
    must be drawn) plus its FLOPs at the peak GFLOP/s (everything else free)."""
    if "rng_share" not in c:
        return None
    return c["rng_share"] * c["cpu_per_step"] + c["flops_per_step"] / (peak * 1e9)


def main_job_floor(runs: dict, peak: float, cores: int = MAIN_JOB_CORES,
                   stages: tuple[tuple[str, int], ...] = MAIN_JOB) -> dict[str, float] | None:
    """The least wall time of the README's main job at the current side's exact numerics on
    ``cores`` cores: per step the random draws, which do not spread over cores (torch's CPU
    generator is one serial Mersenne Twister behind a lock), plus the step's FLOPs at ``cores`` x
    the one-thread peak (perfect scaling); everything else free.  ``None`` without a profile of
    every stage."""
    rng = mm = 0.0
    for recipe, epochs in stages:
        c = summarise(runs.get(recipe, {}).get("current", []))
        if c is None or "rng_share" not in c:
            return None
        steps = epochs * c["steps_per_epoch"]
        rng += steps * c["rng_share"] * c["cpu_per_step"]
        mm += steps * c["flops_per_step"] / (peak * 1e9 * cores)
    return {"rng_s": rng, "matmul_s": mm, "floor_s": rng + mm}


def main_job_lines(runs: dict, peak: float, cores: int = MAIN_JOB_CORES) -> list[str]:
    """The third section: the main job's exact floor against issue 13's 10 minutes."""
    f = main_job_floor(runs, peak, cores)
    if f is None:
        return []
    stages = " + ".join(f"`{r}` x {e} epochs" for r, e in MAIN_JOB)
    verdict = "above" if f["floor_s"] > 600 else "within"
    return [
        "",
        f"### The README's main job at the exact floor, on {cores} cores",
        "",
        f"{stages} (the epochs of its end-to-end timing), each step at its exact floor with the products spread "
        f"perfectly over {cores} cores ({cores} x {peak:.1f} GFLOP/s) and the random draws on one (torch's CPU "
        "generator is serial): an optimistic ESTIMATE from the shares above, not a timing.",
        "",
        "| random draws | matrix products at the peak | **exact floor** | issue 13's goal |",
        "|---|---|---|---|",
        f"| {f['rng_s'] / 60:.1f} min | {f['matmul_s'] / 60:.1f} min | **{f['floor_s'] / 60:.1f} min** | "
        f"10 min: the floor is {verdict} it |",
    ]


def peak_matmul_gflops(n: int = 2048, repeats: int = 8) -> float:
    """Best one-thread fp32 GFLOP/s of ``[n x n] @ [n x n]``, in CPU time (as the steps are)."""
    import torch

    torch.set_num_threads(1)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        c0 = time.process_time()
        a @ b
        best = min(best, time.process_time() - c0)
    return 2 * n**3 / best / 1e9


# ----------------------------------------------------------------------------- driver
def run_side(root: Path, recipe: str, args: argparse.Namespace, tmp: Path, tag: str) -> dict[str, Any]:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in recipe)
    out = tmp / f"{safe}-{tag}.json"
    log = tmp / f"{safe}-{tag}.log"
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    spec = recipe if tag == "current" else parse_spec(recipe)[0]  # switches on the current side only
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", spec, "--warmup", str(args.warmup),
           "--seconds", str(args.seconds), "--min_steps", str(args.min_steps), "--json", str(out)]
    with open(log, "w", encoding="utf-8") as fh:
        rc = subprocess.run(cmd, cwd=root, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=args.timeout).returncode
    if rc != 0 or not out.is_file():
        tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:])
        print(f"[speed_train] {recipe} ({tag}) failed, rc={rc}:\n{tail}", file=sys.stderr)
        return {"recipe": recipe, "failed": True, "rc": rc}
    res = json.loads(out.read_text(encoding="utf-8"))
    out.unlink()
    return res


def summarise(runs: list[dict[str, Any]]) -> dict[str, float] | None:
    ok = [r for r in runs if not r.get("failed")]
    if not ok:
        return None
    med = lambda k: statistics.median(r[k] for r in ok)  # noqa: E731
    keys = ("sec_per_step", "cpu_per_step", "seq_per_s", "epoch_s", "gflops", "flops_per_step", "steps_per_epoch",
            "batch_rows", "rng_share", "matmul_share")
    return {k: med(k) for k in keys if all(k in r for r in ok)} | {"n": len(ok)}


def write_report(args: argparse.Namespace, recipes: list[str], runs: dict, info: dict, peak: float, base_sha: str,
                 cur_sha: str, dirty: str, loads: list[str], t_start: float, command: str, final: bool = False) -> None:
    """Write the markdown table (after every recipe, so an interrupted run keeps what it measured)."""
    lines = [
        f"- baseline: `{args.baseline}` (= `{base_sha}`) in a temporary git worktree; current: `{cur_sha}`"
        + (" with uncommitted changes" if dirty else ""),
        f"- peak: best one-thread fp32 `[2048 x 2048] @ [2048 x 2048]` in CPU time: **{peak:.1f} GFLOP/s** (at the start)",
        f"- load average (1/5/15 min) at the start and after each recipe: {'; '.join(loads)}",
        f"- wall time of the benchmark so far: {(time.time() - t_start) / 60:.1f} min" + ("" if final else " (**in progress**)"),
        f"- per run: a fresh one-thread process per side; {args.warmup} untimed warm-up step(s), then steps timed for "
        f"{args.seconds:g} s (at least {args.min_steps}); {args.repeats} repeat(s), baseline and current "
        "interleaved (order alternating); medians reported",
        "- **CPU s/step**: the worker's own CPU time (`time.process_time`, one thread) per step: what a step costs "
        "on a core of its own, and far less sensitive than wall time to other jobs on the shared cores; "
        "**epoch = steps per epoch x CPU s/step, EXTRAPOLATED** from the timed steps",
        "- wall ratio: the same from wall-clock seconds per step (median step), shown for completeness: with a load "
        "average near 10 on 2 cores it swings by 2x between neighbouring runs",
        "- GFLOP/s: FLOPs of one training step (forward + backward) from `torch.utils.flop_counter.FlopCounterMode` "
        "(matrix products and attention only) / CPU s/step; % of the peak",
        "- ranges: min-max over the repeat pairs",
        "",
        "| recipe | steps/epoch | baseline CPU s/step | current CPU s/step | **speed-up, CPU time** (range) | "
        "speed-up, wall (range) | baseline epoch | current epoch | current seq/s (CPU) | GFLOP/step | "
        "current GFLOP/s (% peak) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for recipe in recipes:
        rb, rc = runs[recipe]["baseline"], runs[recipe]["current"]
        b, c = summarise(rb), summarise(rc)
        if c is not None and b is None and rb:  # e.g. a recipe the baseline commit does not have: this side alone
            gfl = c["flops_per_step"] / c["cpu_per_step"] / 1e9
            lines.append(
                f"| {recipe} | {c['steps_per_epoch']:.0f} | failed (see the log) | {c['cpu_per_step']:.3f} | no ratio | | | "
                f"{c['steps_per_epoch'] * c['cpu_per_step']:.0f} s | {c['batch_rows'] / c['cpu_per_step']:.0f} | "
                f"{c['flops_per_step'] / 1e9:.2f} | {gfl:.2f} ({100 * gfl / peak:.1f} %) |"
            )
            continue
        if b is None or c is None:
            if rb or rc:
                lines.append(f"| {recipe} | failed or not run | | | | | | | | | |")
            continue
        ok = [(x, y) for x, y in zip(rb, rc) if not x.get("failed") and not y.get("failed")]
        cpu_pairs = [x["cpu_per_step"] / y["cpu_per_step"] for x, y in ok]
        wall_pairs = [x["sec_per_step"] / y["sec_per_step"] for x, y in ok]
        ratio = b["cpu_per_step"] / c["cpu_per_step"]
        wall = b["sec_per_step"] / c["sec_per_step"]
        name = f"**{recipe}**" if recipe.partition(":")[0] in PAPER else recipe
        spe = c["steps_per_epoch"]
        gfl = c["flops_per_step"] / c["cpu_per_step"] / 1e9
        lines.append(
            f"| {name} | {spe:.0f} | {b['cpu_per_step']:.3f} | {c['cpu_per_step']:.3f} | "
            f"**{ratio:.2f}x** ({min(cpu_pairs):.2f}-{max(cpu_pairs):.2f}) | {wall:.2f}x ({min(wall_pairs):.2f}-{max(wall_pairs):.2f}) | "
            f"{spe * b['cpu_per_step']:.0f} s | {spe * c['cpu_per_step']:.0f} s | {c['batch_rows'] / c['cpu_per_step']:.0f} | "
            f"{c['flops_per_step'] / 1e9:.2f} | {gfl:.2f} ({100 * gfl / peak:.1f} %) |"
        )
    lines += bound_lines(recipes, runs, peak) + main_job_lines(runs, peak)
    data = {"info": info, "peak_gflops": peak, "baseline": base_sha, "current": cur_sha, "runs": runs}
    body = header_md("Training speed, this checkout vs a baseline commit", command, info, lines)
    write_atomic(args.out, "# Training speed\n\n" + body + "\n")
    dump_json(args.out.with_suffix(".json"), data)


def bound_lines(recipes: list[str], runs: dict, peak: float) -> list[str]:
    """The second table: where the current side's step goes, and the most an exact change could gain."""
    rows = []
    for recipe in recipes:
        b, c = summarise(runs[recipe]["baseline"]), summarise(runs[recipe]["current"])
        floor = exact_floor(c, peak) if c is not None else None
        if floor is None:
            continue
        rng, mm = c["rng_share"] * c["cpu_per_step"], c["matmul_share"] * c["cpu_per_step"]
        mm_rate = c["flops_per_step"] / mm / 1e9 if mm > 0 else float("nan")
        rest = c["cpu_per_step"] - rng - mm
        ceiling = f"**{b['cpu_per_step'] / floor:.2f}x**" if b is not None else "no baseline"
        rows.append(
            f"| {recipe} | {c['cpu_per_step']:.3f} | {rng:.3f} ({100 * c['rng_share']:.0f} %) | "
            f"{mm:.3f} ({100 * c['matmul_share']:.0f} %) at {mm_rate:.0f} GFLOP/s | {rest:.3f} | "
            f"{floor:.3f} | {c['cpu_per_step'] / floor:.2f}x | {ceiling} |"
        )
    if not rows:
        return []
    return [
        "",
        "### Where the current step goes, and the most an exact change could gain",
        "",
        "Shares of a step's self CPU time under `torch.profiler` (forward + backward of the training loss, "
        "2 passes, optimizer excluded), times the CPU s/step above. **Random draws**: dropout masks, "
        "gate noise, sampled negatives (`uniform_`, `normal_`, `bernoulli_`, ...). An exact change keeps "
        "the loss curve, so it draws the same random numbers; at today's FLOPs it cannot multiply "
        f"faster than the peak ({peak:.1f} GFLOP/s). **Exact floor** = random draws + GFLOP/step / peak "
        "(everything else free); **exact ceiling** = baseline CPU s/step / exact floor: the most any "
        "exact change to today's computation could reach against the baseline (fewer FLOPs aside).",
        "",
        "| recipe | current CPU s/step | random draws (share) | matrix products (share) at | rest | "
        "exact floor | left for exact changes | **exact ceiling vs baseline** |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", default="b5b8ccd", help="baseline git commit (checked out in a temporary worktree)")
    ap.add_argument("--current", default=None,
                    help="measure this commit (in a second temporary worktree) instead of the working tree")
    ap.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated recipe names")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per run")
    ap.add_argument("--seconds", type=float, default=20.0, help="timed seconds per run (at least --min_steps)")
    ap.add_argument("--min_steps", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per worker process")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "speed_train.md")
    ap.add_argument("--floor-from", type=Path, metavar="JSON",
                    help="measure nothing: print the floor sections of an earlier run's JSON (its --out .json)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker, args.warmup, args.seconds, args.min_steps, args.json)
        return 0

    if args.floor_from:
        data = json.loads(args.floor_from.read_text())
        recipes = [r for r in data["runs"] if r in data["runs"]]
        print("\n".join(bound_lines(recipes, data["runs"], data["peak_gflops"])
                        + main_job_lines(data["runs"], data["peak_gflops"])))
        return 0
    recipes = [r for r in args.recipes.split(",") if r]
    info = machine_info()
    peak = peak_matmul_gflops()
    base_sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", args.baseline], capture_output=True,
                              text=True, check=True).stdout.strip()
    dirty = "" if args.current else subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
    ).stdout.strip()
    cur_sha = info["git_commit"] if not args.current else subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", args.current], capture_output=True, text=True, check=True
    ).stdout.strip()
    loads = [loadavg()]
    command = "python benchmarks/speed_train.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally below: remove the worktrees
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {r: {"baseline": [], "current": []} for r in recipes}
    t_start = time.time()
    with tempfile.TemporaryDirectory(prefix="speed_train-") as tmpdir:
        tmp = Path(tmpdir)
        wt = tmp / "baseline"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(wt), args.baseline], check=True,
                       capture_output=True)
        cur = REPO
        if args.current:
            cur = tmp / "current"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(cur), args.current], check=True,
                           capture_output=True)
        try:
            sides = {"baseline": wt, "current": cur}
            for recipe in recipes:
                for rep in range(args.repeats):
                    order = ("baseline", "current") if rep % 2 == 0 else ("current", "baseline")
                    for side in order:
                        res = run_side(sides[side], recipe, args, tmp, side)
                        runs[recipe][side].append(res)
                        msg = "failed" if res.get("failed") else (
                            f"{res['cpu_per_step'] * 1000:.0f} CPU ms/step, {res['sec_per_step'] * 1000:.0f} wall ms/step")
                        print(f"[speed_train] {recipe} rep {rep + 1}/{args.repeats} {side}: {msg} (load {loadavg()})",
                              flush=True)
                loads.append(loadavg())
                write_report(args, recipes, runs, info, peak, base_sha, cur_sha, dirty, loads, t_start, command)
        finally:
            for path in {wt, cur} - {REPO}:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)], capture_output=True)

    write_report(args, recipes, runs, info, peak, base_sha, cur_sha, dirty, loads, t_start, command, final=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
