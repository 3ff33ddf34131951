"""What a run's numbers depend on besides its config: the code commit, versions, threads, device.

Two fits of one config and seed give identical floats only in the same environment: a different
thread count changes the order of float sums (docs/reliability.md), so may another CPU generation
(torch dispatches to its instruction set), and a different torch or commit may change kernels or
defaults.  :func:`run_environment` is written into every test metrics file
(``test_metrics.json``, ``test-<stamp>.json``) under ``"environment"`` so that two runs that
disagree can be told apart without guessing.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def package_version(package: str) -> str | None:
    """The installed version of ``package``, ``None`` where it is not installed."""
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def source_commit(path: Path | None = None) -> str | None:
    """The git commit of the checkout holding the zoo's source (``+dirty`` when tracked files
    differ from it); ``None`` for an installed package outside a checkout or without ``git``."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+dirty" if dirty else head


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo`` (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bf16 arithmetic


def native_bf16_flags() -> list[str] | None:
    """The flags of :data:`BF16_CPU_FLAGS` this CPU has (``/proc/cpuinfo``); None where unknown."""
    flags = _cpuinfo().get("flags")
    return None if flags is None else [f for f in BF16_CPU_FLAGS if f in flags.split()]


def cpu_native_bf16() -> bool | None:
    """Whether this CPU computes bf16 natively (``avx512_bf16`` or ``amx_bf16`` in ``/proc/cpuinfo``);
    None where that is unknown (no ``/proc/cpuinfo``).  Without it, ``bf16-mixed`` on the CPU runs
    emulated kernels and is slower than fp32, not faster (docs/performance.md)."""
    flags = native_bf16_flags()
    return None if flags is None else bool(flags)


def emulated_bf16_note(precision: Any, accelerator: Any) -> str | None:
    """A note when ``bf16`` precision will run on a CPU without native bf16 (``accelerator`` cpu, or
    auto/unset without CUDA): its kernels are emulated there and a step is slower than in fp32
    (MIRACLE's step 6.7x slower on an AVX2-only host, ``benchmarks/results/speed_train_bf16_avx2.md``),
    so the switch costs time instead of saving it.  None otherwise (also where unknown)."""
    if not str(precision).startswith("bf16") or str(accelerator) not in ("cpu", "auto", "None"):
        return None
    if str(accelerator) != "cpu":
        import torch

        if torch.cuda.is_available():
            return None
    if cpu_native_bf16() is not False:
        return None
    return (f"trainer.precision {precision} on a CPU without native bf16 (no avx512_bf16/amx_bf16 in "
            "/proc/cpuinfo): emulated, slower than 32-true here; it pays on GPUs and CPUs with native bf16")


def _cpu_model(info: dict[str, str]) -> str:
    """Model name with family/model/stepping: hosts rented as "AMD EPYC" differ in generation."""
    name = info.get("model name") or platform.processor()
    ident = "/".join(info[k] for k in ("cpu family", "model", "stepping") if k in info)
    return f"{name} (family/model/stepping {ident})" if ident else name


def run_environment(trainer: Any = None) -> dict[str, Any]:
    """Versions, commit, threads and devices of this process (``trainer``: its precision,
    accelerator and world size).  Informative only: nothing fails when a field is unknown."""
    import torch

    info = _cpuinfo()
    env: dict[str, Any] = {
        "zoo": package_version("zoo"),
        "git_commit": source_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": package_version("lightning"),
        "numpy": package_version("numpy"),
        "platform": platform.platform(),
        "host": platform.node(),
        "cpu": _cpu_model(info),
        # the instruction set torch's CPU kernels dispatch to (AVX2, AVX512, ...): the same thread count
        # on another generation of CPU runs other kernels, whose float sums may differ in the last bits
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_native_bf16": cpu_native_bf16(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        **{v.lower(): os.environ.get(v) for v in THREAD_VARS},
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available() else [],
    }
    if trainer is not None:
        env["accelerator"] = type(getattr(trainer, "accelerator", None)).__name__
        env["precision"] = str(getattr(trainer, "precision", None))
        env["world_size"] = getattr(trainer, "world_size", None)
    return env
