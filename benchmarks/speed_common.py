"""Shared pieces of the speed benchmarks (``speed_recbole.py``, ``speed_eval.py``, ``speed_scale.py``).

Standard library only at import time: the RecBole worker imports this module from RecBole's own
virtualenv.

* Memory: ``VmRSS`` / ``VmHWM`` of ``/proc/self/status`` (resident size now / its high-water
  mark); :func:`reset_peak` resets the high-water mark to the current size through
  ``/proc/self/clear_refs`` so that a phase's peak is its own.  A whole run's peak is the
  ``ru_maxrss`` that ``os.wait4`` returns for that child process (:func:`run_measured`).
* Machine header: ``nproc``, ``free -g``, CPU model, torch version, load average, git commit.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
GIB = 1 << 30
MIB = 1 << 20


# ----------------------------------------------------------------------------- memory
def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def rss_bytes() -> int:
    """Resident set size of this process now."""
    return _status_kib("VmRSS") * 1024


def peak_bytes() -> int:
    """Resident high-water mark of this process (since start or the last :func:`reset_peak`)."""
    return _status_kib("VmHWM") * 1024


def reset_peak() -> None:
    """Reset ``VmHWM`` to the current resident size (Linux ``clear_refs`` value 5)."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
        fh.write("5")


def run_measured(cmd: list[str], env: dict[str, str] | None = None, log: Path | None = None,
                 cwd: Path = REPO, timeout: float | None = None) -> dict[str, Any]:
    """Run ``cmd`` in a fresh process; return rc, wall seconds and its own peak RSS (``wait4``).

    stdout+stderr go to ``log`` (or are discarded).  ``ru_maxrss`` from ``wait4`` is the peak of
    that child (and of any grandchild it waited for), independent of earlier children.
    """
    out = open(log, "w", encoding="utf-8") if log else subprocess.DEVNULL
    t0 = time.perf_counter()
    try:
        proc = subprocess.Popen(cmd, cwd=str(cwd), env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = None if timeout is None else t0 + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if log:
            out.close()
    return {
        "rc": proc.returncode,
        "wall_s": time.perf_counter() - t0,
        "peak_rss_bytes": usage.ru_maxrss * 1024,
        "cmd": " ".join(shlex.quote(c) for c in cmd),
    }


def tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(encoding="utf-8", errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# ----------------------------------------------------------------------------- timing
def timed(fn, repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Median / min wall time of ``fn()`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(ts), "min_s": min(ts), "repeats": repeats}


# ----------------------------------------------------------------------------- machine
def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine_info() -> dict[str, Any]:
    def sh(cmd: str) -> str:
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "?"

    cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
    try:
        import torch  # noqa: PLC0415

        torch_v, threads = torch.__version__, torch.get_num_threads()
        isa = torch.backends.cpu.get_cpu_capability()
    except ImportError:
        torch_v, threads, isa = "?", "?", "?"
    from zoo.provenance import native_bf16_flags  # noqa: PLC0415  (stdlib only)

    bf16 = native_bf16_flags() or []
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "nproc": sh("nproc"),
        "free_g": sh("free -g"),
        "cpu": cpu or platform.processor(),
        # torch's CPU kernels (AVX2, AVX512, ...) and native bf16: bf16-mixed is emulated, and slower, without it
        "cpu_isa": f"{isa}, bf16 {'native (' + ', '.join(bf16) + ')' if bf16 else 'not native'}",
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch_v,
        "torch_threads": threads,
        "git_commit": sh(f"git -C {shlex.quote(str(REPO))} rev-parse --short HEAD"),
        "loadavg": loadavg(),
        "machine_free_flag": os.path.exists("/tmp/machine_free"),
    }


def header_md(title: str, command: str, info: dict[str, Any], extra: list[str] | None = None) -> str:
    lines = [
        f"## {title}",
        "",
        f"- command: `{command}`",
        f"- date: {info['date']}, git commit `{info['git_commit']}`",
        f"- machine: `nproc` = {info['nproc']}, {info['cpu']} ({info.get('cpu_isa', '?')}), {info['platform']}; "
        f"python {info['python']}, "
        f"torch {info['torch']} ({info['torch_threads']} threads)",
        f"- load average (1/5/15 min) at start: {info['loadavg']}"
        + ("" if info.get("machine_free_flag") else " — **/tmp/machine_free was absent: other jobs may share the CPU**"),
        "- `free -g`:",
        "",
        "```",
        info["free_g"],
        "```",
        "",
    ]
    return "\n".join(lines + (extra or []))


def write_atomic(path: Path, text: str) -> None:
    """Stdlib twin of ``zoo.runfiles.atomic_write``: this module must not import ``zoo``, whose
    code a benchmark worker takes from ITS side's checkout (speed_train.py's baseline worktree)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def update_results_md(path: Path, section: str, body: str) -> None:
    """Replace (or append) the block between ``<!-- section:NAME -->`` markers in ``path``."""
    path = Path(path)
    start, end = f"<!-- section:{section} -->", f"<!-- /section:{section} -->"
    block = f"{start}\n{body.rstrip()}\n{end}\n"
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Speed benchmarks\n\n"
    if start in text and end in text:
        a = text.index(start)
        b = text.index(end) + len(end)
        text = text[:a] + block.rstrip("\n") + text[b:]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    write_atomic(path, text)


def fmt_bytes(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / MIB:.0f} MiB"


def dump_json(path: Path, obj: Any) -> None:
    write_atomic(Path(path), json.dumps(obj, indent=2, default=str))


def command_line(words: list[str], argv: list[str] | None) -> str:
    """The shell command that ran a benchmark: ``words`` then its arguments, quoted."""
    return " ".join(shlex.quote(x) for x in words + (argv if argv is not None else sys.argv[1:]))


def publish(result: dict[str, Any], json_path: Path, md: str, out: str | None, section: str) -> None:
    """Keep the raw result as JSON, print the markdown, and replace ``section`` of ``out`` with it."""
    dump_json(json_path, result)
    print(md)
    if out:
        update_results_md(Path(out), section, md)


def python_exe() -> str:
    return sys.executable
