"""Data-layer scale benchmark (issue 8, "Scale"): time and peak memory of the processing path.

Two measurements on deterministic generator output (``datamodules.synthetic``, seed
``DEFAULT_SEED``) in the Amazon 2018 formats as distributed (ratings CSV without header +
gzipped ``meta_<Category>.json.gz``):

* ``--office``: an Office-sized set (default 800,000 rating lines, 100,000 users, 28,000
  items; after ``require_text`` + 5-core that is of the order of the papers' Office,
  87,436 users / 25,986 items / 684,837 interactions, MIRACLE Table 1).  Timed end to end
  through ``prepare_dataset("amazon2018", {"ratings", "meta"},
  ProcessingOptions(k_core=5, require_text=True), cache_dir=<fresh>)`` = parse + filter +
  remap + split + atomic cache write + cache load; the phases are timed inside the same run
  by wrapping the library's own functions (``read_amazon_ratings``,
  ``read_amazon2018_meta``, ``read_raw``, ``process``, ``k_core_filter``, ``write_cache``,
  ``load_cache``), so nothing is run twice.  Target: about a minute on 2 cores.
* ``--mix``: the papers' pre-training mix D_p (Food, Home, CDs, Kindle, Movies; 14,029,229
  interactions after 5-core, HORAE Table 6), generated with ``--mix-total`` rating lines in
  all, shared out over the five domains in the papers' proportions (users and items scaled
  by the same factor), processed as ``SequentialDataModule(pretrain_domains=...)`` does:
  every domain through ``prepare_dataset`` (in the recipe's order), then
  ``datamodules.base.merge_domains``.  Target: peak RSS at most 24 GiB.  With
  ``--mix-total`` below 14M the figures are extrapolated linearly (and the table says so).

Every measurement runs in a fresh subprocess (and the generators in another one before it), so
a peak is the measurement's own: ``VmHWM`` of ``/proc/self/status`` (the process's resident
high-water mark; per phase after resetting it through ``/proc/self/clear_refs``) and
``resource.getrusage(RUSAGE_SELF).ru_maxrss``.  Raw files and caches go to ``--workdir``
(default ``/tmp/zoo-data-scale``), never into the repository.

Usage::

    python benchmarks/data_scale.py --office --mix [--mix-total 14000000] \\
        --out benchmarks/results/data_scale.md
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
GIB = 1 << 30

#: Office-sized generator defaults (raw lines, users, items)
OFFICE_SIZES = dict(users=100_000, items=28_000, interactions=800_000)
#: papers' Office after require_text + 5-core (MIRACLE Table 1 / HORAE Table 6)
OFFICE_PAPER = dict(users=87_436, items=25_986, interactions=684_837)
#: D_p after 5-core (MIRACLE Table 1 / HORAE Table 6), in the recipe's order
#: (recipes/miracle_pretrain_amazon.yaml): name -> (file stem, users, items, interactions)
MIX_PAPER = {
    "food": ("Grocery_and_Gourmet_Food", 115_349, 39_670, 1_027_413),
    "home": ("Home_and_Kitchen", 731_913, 185_552, 6_451_926),
    "cds": ("CDs_and_Vinyl", 94_010, 64_439, 1_118_563),
    "kindle": ("Kindle_Store", 138_436, 98_111, 2_204_596),
    "movies": ("Movies_and_TV", 281_700, 59_203, 3_226_731),
}
MIX_PAPER_TOTAL = 14_029_229
MIX_TARGET_GIB = 24.0
OFFICE_TARGET_S = 60.0


# ----------------------------------------------------------------------------- measuring


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _hwm_kib() -> int:
    """Resident high-water mark of this process (VmHWM, KiB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False when not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class Phases:
    """Wall time and resident peak of named phases, nested phases allowed (a phase's peak is
    the highest RSS while it ran, whatever ran inside it)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self._open: list[dict[str, Any]] = []
        self._count = 0
        self.peak_kib = 0  # the process's peak over the whole run (max VmHWM seen)
        self.can_reset = _reset_hwm()

    def wrap(self, module: Any, attr: str, label: str) -> None:
        """Replace ``module.attr`` by a timed wrapper (the library calls it through its module)."""
        fn = getattr(module, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            self.start(label)
            try:
                return fn(*args, **kwargs)
            finally:
                self.stop()

        setattr(module, attr, timed)

    def _read(self) -> int:
        hwm = _hwm_kib()
        self.peak_kib = max(self.peak_kib, hwm)
        return hwm

    def start(self, label: str) -> None:
        # the enclosing phases keep the peak seen so far before the reset
        hwm = self._read()
        for row in self._open:
            row["peak_kib"] = max(row["peak_kib"], hwm)
        _reset_hwm()
        self._open.append({"phase": label, "depth": len(self._open), "start": self._count,
                           "t0": time.perf_counter(), "peak_kib": self._read()})
        self._count += 1

    def stop(self) -> None:
        row = self._open.pop()
        hwm = self._read()
        row["seconds"] = time.perf_counter() - row.pop("t0")
        row["peak_kib"] = max(row["peak_kib"], hwm)
        for outer in self._open:
            outer["peak_kib"] = max(outer["peak_kib"], row["peak_kib"])
        self.rows.append(row)


def _maxrss_kib() -> int:
    """``ru_maxrss`` (KiB on Linux).  Linux computes it as max(exec-time peak, the memory map's
    high-water mark), so resetting VmHWM lowers it too: with per-phase resets the process peak is
    :attr:`Phases.peak_kib` (the largest VmHWM read), which is what ``ru_maxrss`` gives
    without them."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _ensure_repo_on_path() -> None:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


# ----------------------------------------------------------------------------- workers
# Each worker runs in its own interpreter and prints one JSON line (the last line of stdout).


def worker_generate(spec: dict[str, Any]) -> dict[str, Any]:
    """Write Amazon 2018 ratings CSV + gzipped meta for each ``spec["sets"]`` entry."""
    _ensure_repo_on_path()
    from datamodules.synthetic import DEFAULT_SEED, write_synthetic

    out = []
    for i, s in enumerate(spec["sets"]):
        t0 = time.perf_counter()
        paths = write_synthetic("amazon2018", s["dir"], s["users"], s["items"], s["interactions"],
                                seed=DEFAULT_SEED + i, name=s["name"], gz=True)
        out.append({"name": s["name"], "seconds": time.perf_counter() - t0,
                    "paths": {k: str(v) for k, v in paths.items()},
                    "bytes": {k: v.stat().st_size for k, v in paths.items()}})
    return {"sets": out, "loadavg": loadavg()}


def _instrument(ph: Phases) -> None:
    import datamodules.amazon as amazon
    import datamodules.base as base
    import datamodules.formats as formats
    import datamodules.processing as processing

    ph.wrap(amazon, "read_amazon_ratings", "parse: ratings CSV")
    ph.wrap(amazon, "read_amazon2018_meta", "parse: meta JSON lines (gz)")
    ph.wrap(formats, "read_raw", "parse (read_raw)")
    ph.wrap(processing, "k_core_filter", "process: iterative k-core")
    ph.wrap(base, "process", "process (filter, sort, remap, split)")
    ph.wrap(base, "write_cache", "atomic cache write")
    ph.wrap(base, "load_cache", "cache load")


def _begin_worker() -> tuple[Phases, str]:
    """A worker's prologue: timed import of the data stack, instrumented phases, start load."""
    _ensure_repo_on_path()
    ph = Phases()
    ph.start("import pandas/numpy/datamodules")
    import datamodules.base  # noqa: F401  (the import cost is what this phase measures)

    ph.stop()
    _instrument(ph)
    return ph, loadavg()


def _worker_result(ph: Phases, load0: str, **fields: Any) -> dict[str, Any]:
    """A worker's JSON result: its phases, ``fields``, peak RSS and the load before / after."""
    return {"phases": ph.rows, **fields, "maxrss_kib": max(_maxrss_kib(), ph.peak_kib),
            "vmhwm_reset": ph.can_reset, "loadavg_start": load0, "loadavg_end": loadavg()}


def worker_office(spec: dict[str, Any]) -> dict[str, Any]:
    """``prepare_dataset`` end to end on the Office-sized files, phases timed inside."""
    ph, load0 = _begin_worker()
    from datamodules.base import prepare_dataset
    from datamodules.processing import ProcessingOptions

    ph.start("prepare_dataset (end to end)")
    data = prepare_dataset("amazon2018", spec["paths"],
                           opts=ProcessingOptions(k_core=5, require_text=True),
                           cache_dir=spec["cache_dir"], name=spec["name"], verbose=False)
    ph.stop()
    stats = {k: data.stats[k] for k in ("num_users", "num_items", "num_interactions", "avg_len",
                                        "num_categories", "items_with_text")}
    return _worker_result(ph, load0, stats=stats, log=data.stats["log"])


def worker_mix(spec: dict[str, Any]) -> dict[str, Any]:
    """Every domain through ``prepare_dataset``, then ``merge_domains`` (as the datamodule)."""
    ph, load0 = _begin_worker()
    from datamodules.base import merge_domains, prepare_dataset
    from datamodules.processing import ProcessingOptions

    opts = ProcessingOptions(k_core=5, require_text=True)
    domains, per_domain = [], []
    t_all = time.perf_counter()
    for dom in spec["domains"]:
        ph.start(f"domain {dom['name']}: prepare_dataset")
        domains.append(prepare_dataset("amazon2018", dom["paths"], opts=opts,
                                       cache_dir=spec["cache_dir"], name=dom["name"],
                                       verbose=False))
        ph.stop()
        s = domains[-1].stats
        per_domain.append({k: s[k] for k in ("name", "num_users", "num_items",
                                             "num_interactions")})
    ph.start("merge_domains")
    merged = merge_domains(domains)
    ph.stop()
    total = time.perf_counter() - t_all
    stats = {k: merged.stats[k] for k in ("num_users", "num_items", "num_interactions",
                                          "avg_len", "num_categories")}
    return _worker_result(ph, load0, stats=stats, per_domain=per_domain, seconds=total)


WORKERS = {"generate": worker_generate, "office": worker_office, "mix": worker_mix}


def run_worker(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run one worker in a fresh interpreter and return its JSON result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--spec",
           json.dumps(spec)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"worker {kind} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["subprocess_wall_s"] = wall
    return result


# ----------------------------------------------------------------------------- plans


def mix_sets(total: int, workdir: Path) -> list[dict[str, Any]]:
    """Generator sizes of the five domains: ``total`` rating lines in the papers' proportions;
    users and items scaled by the same factor (+10% users, +5% items for what 5-core drops)."""
    scale = total / MIX_PAPER_TOTAL
    sets = []
    for name, (stem, users, items, inter) in MIX_PAPER.items():
        n = round(inter * scale)
        sets.append({"name": name, "file": stem, "dir": str(workdir / "mix" / name),
                     "users": min(round(users * scale * 1.1), n),
                     "items": max(round(items * scale * 1.05), 10), "interactions": n})
    for s in sets:  # generator names files after the category
        s["name"] = s.pop("file")
    return sets


def _gib(kib: float) -> float:
    return kib / (1 << 20)


def _phase_table(rows: list[dict[str, Any]]) -> list[str]:
    out = ["| phase | wall s | peak RSS during phase (GiB) |", "|---|---:|---:|"]
    for r in rows:
        indent = "&nbsp;&nbsp;" * r["depth"]
        out.append(f"| {indent}{r['phase']} | {r['seconds']:.1f} | {_gib(r['peak_kib']):.2f} |")
    return out


def _ordered(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Phases in start order (they are recorded in stop order)."""
    return sorted(rows, key=lambda r: r["start"])


def machine_header(argv: list[str]) -> list[str]:
    def sh(cmd: str) -> str:
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
        except OSError:
            return "?"

    versions = sh(f"{shlex.quote(sys.executable)} -c \"import pandas, numpy, torch; "
                  "print(f'pandas {pandas.__version__}, numpy {numpy.__version__}, "
                  "torch {torch.__version__}')\"")
    try:
        import importlib.metadata as md

        pyarrow = md.version("pyarrow")
    except Exception:  # noqa: BLE001 - only for the header
        pyarrow = "absent"
    cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
    return [
        "# Data-layer scale benchmark",
        "",
        f"- command: `python {' '.join(shlex.quote(a) for a in argv)}`",
        f"- date: {_dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- git commit: `{sh('git -C ' + shlex.quote(str(REPO)) + ' rev-parse --short HEAD')}`",
        f"- machine: `nproc` = {sh('nproc')}, CPU {cpu or '?'}, {platform.platform()}",
        "- `free -g`:",
        "",
        "```",
        sh("free -g"),
        "```",
        "",
        f"- python {platform.python_version()}, {versions}, pyarrow {pyarrow}",
        f"- load average (1/5/15 min) at start: {loadavg()} — the 2 cores are shared with a "
        "background training queue, so wall times are pessimistic; every figure below carries "
        "the load average around its own run",
        "- memory: `VmHWM` (resident high-water mark of the measuring process, reset per phase "
        "via `/proc/self/clear_refs`) and `ru_maxrss`; every measurement runs in a fresh "
        "subprocess, the generators in another one before it",
        "",
    ]


# ----------------------------------------------------------------------------- main


def bench_office(args: argparse.Namespace, workdir: Path) -> list[str]:
    office_dir = workdir / "office"
    sizes = dict(users=args.office_users, items=args.office_items,
                 interactions=args.office_lines)
    gen = run_worker("generate", {"sets": [dict(name="Office_Products", dir=str(office_dir),
                                                **sizes)]})
    paths = gen["sets"][0]["paths"]
    cache = workdir / "cache-office"
    shutil.rmtree(cache, ignore_errors=True)
    res = run_worker("office", {"paths": paths, "cache_dir": str(cache), "name": "office"})
    rows = res["phases"]
    e2e = next(r for r in rows if r["phase"].startswith("prepare_dataset"))
    parse = next(r for r in rows if r["phase"] == "parse (read_raw)")
    proc = next(r for r in rows if r["phase"].startswith("process ("))
    st = res["stats"]
    ok = "yes" if e2e["seconds"] <= OFFICE_TARGET_S * 1.5 else "NO"
    by = gen["sets"][0]["bytes"]
    lines = [
        "## 1. Office-sized Amazon 2018 (ratings CSV + gzipped meta)",
        "",
        f"Generator: `python -m datamodules.synthetic --format amazon2018 --users "
        f"{sizes['users']} --items {sizes['items']} --interactions {sizes['interactions']} "
        f"--gzip --name Office_Products` (seed {20240601}); ratings CSV "
        f"{by['ratings'] / 1e6:.1f} MB, meta {by['meta'] / 1e6:.1f} MB gzipped; generated in "
        f"{gen['sets'][0]['seconds']:.1f} s (load {gen['loadavg']}).",
        "",
        "Measured: `prepare_dataset(\"amazon2018\", {\"ratings\": ..., \"meta\": ...}, "
        "opts=ProcessingOptions(k_core=5, require_text=True), cache_dir=<empty>)`.",
        "",
        "| figure | value | load avg (start → end of run) |",
        "|---|---:|---|",
        f"| end to end (parse + filter + split + atomic cache write + load) | "
        f"**{e2e['seconds']:.1f} s** | {res['loadavg_start']} → {res['loadavg_end']} |",
        f"| parse (`read_raw`: ratings CSV + meta JSON + item text) | {parse['seconds']:.1f} s | |",
        f"| processing (`process`: require_text, 5-core, sort, remap, split) | "
        f"{proc['seconds']:.1f} s | |",
        "| peak RSS of the subprocess (max `VmHWM` = `ru_maxrss` without the per-phase "
        "resets; incl. imports) | "
        f"**{_gib(res['maxrss_kib']):.2f} GiB** | |",
        f"| target: about a minute on 2 cores | {'met' if ok == 'yes' else 'NOT met'} | |",
        f"| result | {st['num_users']:,} users, {st['num_items']:,} items, "
        f"{st['num_interactions']:,} interactions, avg len {st['avg_len']:.2f} | |",
        f"| papers' Office (MIRACLE Table 1) | {OFFICE_PAPER['users']:,} users, "
        f"{OFFICE_PAPER['items']:,} items, {OFFICE_PAPER['interactions']:,} interactions | |",
        "",
        f"The generator's item popularity is a Zipf law with exponent 1 (not an option of "
        f"`write_amazon2018`), whose tail keeps fewer items at 5-core than the real Office "
        f"({st['num_items']:,} of {sizes['items']:,} here); users and interactions are of the "
        f"papers' order, and they set the cost (the per-interaction work).",
        "",
        "Phases (nested; a phase's peak is the highest resident size while it ran):",
        "",
        *_phase_table(_ordered(rows)),
        "",
        "Processing log: " + "; ".join(res["log"]),
        "",
    ]
    return lines


def bench_mix(args: argparse.Namespace, workdir: Path) -> list[str]:
    total = args.mix_total
    sets = mix_sets(total, workdir)
    gen = run_worker("generate", {"sets": sets})
    cache = workdir / "cache-mix"
    shutil.rmtree(cache, ignore_errors=True)
    spec = {"cache_dir": str(cache),  # the recipe's short domain names
            "domains": [{"name": short, "paths": g["paths"]}
                        for short, g in zip(MIX_PAPER, gen["sets"])]}
    res = run_worker("mix", spec)
    rows = res["phases"]
    peak = _gib(res["maxrss_kib"])
    imports = next(r for r in rows if r["phase"].startswith("import"))
    base = _gib(imports["peak_kib"])
    factor = MIX_PAPER_TOTAL / total
    extrapolated = base + (peak - base) * factor
    seconds_x = res["seconds"] * factor
    gen_s = sum(g["seconds"] for g in gen["sets"])
    scaled = total < 0.95 * MIX_PAPER_TOTAL
    st = res["stats"]
    lines = [
        "## 2. Pre-training mix D_p (five Amazon 2018 categories, merged)",
        "",
        f"Generator output: {total:,} rating lines in all, shared over the domains in the "
        f"papers' proportions (HORAE Table 6; users x1.1 and items x1.05 of the scaled paper "
        f"counts, so the 5-core result is of their order); generated in {gen_s:.1f} s "
        f"(load {gen['loadavg']}).",
        "",
        "| domain | generator users / items / lines | after require_text + 5-core "
        "(users / items / interactions) |",
        "|---|---|---|",
    ]
    for s, d in zip(sets, res["per_domain"]):
        lines.append(f"| {d['name']} ({s['name']}) | {s['users']:,} / {s['items']:,} / "
                     f"{s['interactions']:,} | {d['num_users']:,} / {d['num_items']:,} / "
                     f"{d['num_interactions']:,} |")
    lines += [
        f"| **merged** | {sum(s['users'] for s in sets):,} / {sum(s['items'] for s in sets):,}"
        f" / {sum(s['interactions'] for s in sets):,} | {st['num_users']:,} / "
        f"{st['num_items']:,} / {st['num_interactions']:,} |",
        "",
        "Measured: each domain through `prepare_dataset(..., ProcessingOptions(k_core=5, "
        "require_text=True))` in the recipe's order (food, home, cds, kindle, movies; "
        "`recipes/miracle_pretrain_amazon.yaml`), the five `Processed` kept, then "
        "`merge_domains` — what `SequentialDataModule(pretrain_domains=...)` does before "
        "features — in one fresh subprocess.",
        "",
        "| figure | value | load avg (start → end of run) |",
        "|---|---:|---|",
        f"| wall time, all five domains + merge ({total:,} lines) | {res['seconds']:.0f} s | "
        f"{res['loadavg_start']} → {res['loadavg_end']} |",
        f"| peak RSS of the subprocess (max `VmHWM`) at {total:,} lines | **{peak:.2f} GiB** | |",
        f"| interpreter + imports (not scaling) | {base:.2f} GiB | |",
    ]
    if scaled:
        lines += [
            f"| **extrapolated linearly to {MIX_PAPER_TOTAL:,} lines** (x{factor:.2f}): "
            f"imports + (peak - imports) x {factor:.2f} | **{extrapolated:.1f} GiB** | |",
            f"| extrapolated wall time (x{factor:.2f}) | {seconds_x / 60:.0f} min | |",
        ]
    # the largest domain's parse + processing sets the peak: resident GiB per million raw lines
    biggest = max(range(len(sets)), key=lambda i: sets[i]["interactions"])
    dom_row = next(r for r in rows if r["phase"] == f"domain {list(MIX_PAPER)[biggest]}: "
                   "prepare_dataset")
    per_million = (_gib(dom_row["peak_kib"]) - base) / (sets[biggest]["interactions"] / 1e6)
    lines.append(f"| peak while the largest domain ({sets[biggest]['name']}, "
                 f"{sets[biggest]['interactions']:,} lines) is processed, above imports, per "
                 f"million raw lines | {per_million:.2f} GiB | |")
    target_peak = extrapolated if scaled else peak
    verdict = "met" if target_peak <= MIX_TARGET_GIB else "NOT met"
    lines += [
        f"| target: peak RSS <= {MIX_TARGET_GIB:.0f} GiB at 14M | {verdict}"
        f"{' (extrapolated)' if scaled else ''} | |",
        "",
    ]
    if scaled:
        lines += [
            f"**Extrapolated, not measured at 14M**: the run used {total:,} generator lines "
            f"({100 / factor:.1f}% of D_p, `--mix-total`); the peak is dominated by the largest "
            "domain (Home, 46% of D_p) being parsed and processed while the earlier domains' "
            "arrays are held, all of which grow linearly in the number of lines.",
            "",
        ]
    lines += ["Phases:", "", *_phase_table(_ordered(rows)), ""]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--office", action="store_true", help="Office-sized end-to-end run")
    parser.add_argument("--mix", action="store_true", help="the 5-domain pre-training mix")
    parser.add_argument("--mix-total", type=int, default=14_000_000,
                        help="rating lines over the five domains (below 14M: extrapolated)")
    parser.add_argument("--office-lines", type=int, default=OFFICE_SIZES["interactions"])
    parser.add_argument("--office-users", type=int, default=OFFICE_SIZES["users"])
    parser.add_argument("--office-items", type=int, default=OFFICE_SIZES["items"])
    parser.add_argument("--workdir", default="/tmp/zoo-data-scale",
                        help="raw files and caches (outside the repository)")
    parser.add_argument("--keep", action="store_true", help="keep --workdir afterwards")
    parser.add_argument("--out", default=None, help="markdown report (default: stdout)")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(WORKERS[args.worker](json.loads(args.spec))))
        return
    if not (args.office or args.mix):
        parser.error("choose --office and/or --mix")
    workdir = Path(args.workdir)
    if REPO in workdir.resolve().parents or workdir.resolve() == REPO:
        parser.error("--workdir must be outside the repository")
    workdir.mkdir(parents=True, exist_ok=True)
    shown = ["benchmarks/data_scale.py", *(argv if argv is not None else sys.argv[1:])]
    lines = machine_header(shown)
    try:
        if args.office:
            print("[data_scale] office ...", file=sys.stderr, flush=True)
            lines += bench_office(args, workdir)
        if args.mix:
            print("[data_scale] mix ...", file=sys.stderr, flush=True)
            lines += bench_mix(args, workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out)
        print(f"[data_scale] wrote {out}", file=sys.stderr)
    else:
        print(text)


if __name__ == "__main__":
    main()
