"""Run a paper's ablation rows (one model init-arg switch each) for N seeds, beside the paper's numbers.

    zoo ablate --paper horae --dataset default --seeds 2            # Table 8 rows on the embedded default
    zoo ablate --paper hpcl4sr --dataset Clothing --data-root ~/data --seeds 5
    zoo ablate --paper timirec --dataset Beauty --table "Table 4" --data-root ~/data --seeds 5

Each row of ``ablations[*].rows`` in ``zoo/experiments/paper_numbers.yaml`` is either ``{args: {...}}``
(the paper's model with these ``model.init_args``, applied to pre-training too, so a switch on a
pre-training loss really removes it there) or ``{model: M}`` (a main-table model, e.g. MIRACLE in
HORAE's Table 8).  Every run goes through the same machinery as ``zoo reproduce``
(``zoo/experiments/reproduce.py``: subprocess ``zoo fit``, resume, missing-data skips); all runs of one
(paper, dataset) share the W&B group ``ablate-<paper>-<dataset>`` and each run is named after its
row (``wo_L_intra-s0``).  Output: ``<out>/<paper>/ablation-<table>-<dataset>.{csv,json,md}``, ``--out``
defaulting to ``runs/ablate`` (git-ignored); finished cells under ``runs/reproduce`` with the same
config and seed are shared, not run again.  The plan (every ``zoo fit``, each once, with an estimated
cost) is printed first; ``--dry-run`` stops there.
"""

from __future__ import annotations

import sys
from typing import Any

from zoo.experiments.reproduce import (
    DEFAULT_ABLATE_OUT, PAPERS, Cell, Options, common_parser, load_numbers, log_wandb_summary, machine_line,
    markdown_table, options_from, run_cells, slug, table_cell, write_results,
)


def ablation_cells(paper: str, dataset: str, numbers: dict[str, Any], opts: Options, tables: list[str] | None = None,
                   rows: list[str] | None = None) -> list[tuple[dict[str, Any], list[str], list[Cell]]]:
    """Per chosen ablation table: (table, its row names, its cells in row then seed order)."""
    info = numbers[paper]
    main = info["main"]
    specs = {**main["models"], **(main.get("reference") or {})}
    chosen = [t for t in info.get("ablations") or [] if not tables or t["table"] in tables]
    if not chosen:
        have = [t["table"] for t in info.get("ablations") or []]
        raise KeyError(f"{paper}: no ablation table {tables} (have {have})")
    out = []
    for table in chosen:
        if dataset not in table["datasets"]:
            raise KeyError(f"--dataset {dataset!r}: {paper} {table['table']} has {list(table['datasets'])}")
        dspec = table["datasets"][dataset]
        names = list(table["rows"])
        if rows:
            unknown = [r for r in rows if r not in names]
            if unknown:
                raise KeyError(f"--rows {unknown}: {paper} {table['table']} has {names}")
            names = [r for r in names if r in rows]
        cells = []
        for row in names:
            rspec = table["rows"][row] or {}
            for seed in opts.seeds:
                run_dir = opts.out / paper / "ablation" / slug(table["table"]) / slug(dataset) / f"{slug(row)}-s{seed}"
                cells.append(table_cell(paper, table["table"], specs, row, rspec.get("model", table["base"]), dataset,
                                        dspec, dict(rspec.get("args") or {}), run_dir, seed,
                                        f"ablate-{paper}-{dataset}", opts))
        out.append((table, names, cells))
    return out


def ablate(paper: str, dataset: str, numbers: dict[str, Any], opts: Options, tables: list[str] | None = None,
           rows: list[str] | None = None) -> list[dict[str, Any]]:
    """One plan over every chosen table's rows, executed (or only printed), then one table file each."""
    info = numbers[paper]
    chosen = ablation_cells(paper, dataset, numbers, opts, tables, rows)
    records = run_cells([c for _, _, cells in chosen for c in cells], opts)
    all_records: list[dict[str, Any]] = []
    for table, names, cells in chosen:
        recs, records = records[:len(cells)], records[len(cells):]
        row_text = ", ".join(f"{r} = {table['rows'][r]}" for r in names)
        header = (f"# {info['title']}\n\n{table['table']}: {table['caption']}.\n\n"
                  f"Rows: {row_text}.\n\n"
                  f"Command: `{opts.command}`\n\nMachine: {machine_line(not opts.dry_run)}\n\n"
                  f"Paper numbers: {'chart only (none printed)' if not table.get('results') else 'as printed'}.\n")
        md = markdown_table(paper, table, names, recs, header, reference_row=table["base"])
        if opts.dry_run:
            if not opts.quiet:
                print(md)
        else:
            stem = f"ablation-{slug(table['table'])}-{slug(dataset)}"
            write_results(opts.out / paper, stem, recs, md, {"paper": paper, "table": table["table"],
                                                             "dataset": dataset, "seeds": opts.seeds})
            log_wandb_summary(f"ablate-{paper}-{dataset}", f"{stem}-summary", recs, md, opts)
            opts.log(f"wrote {opts.out / paper / (stem + '.md')}")
        all_records += recs
    return all_records


def main(argv: list[str] | None = None) -> int:
    ap = common_parser("zoo ablate", "Run a paper's ablation rows through `zoo fit` (docs/reproduction.md).",
                       DEFAULT_ABLATE_OUT)
    ap.add_argument("--paper", required=True, choices=PAPERS)
    ap.add_argument("--dataset", default="default", help="dataset name of the ablation table ('default' = embedded)")
    ap.add_argument("--table", dest="tables", action="append", default=None,
                    help="only this ablation table (e.g. 'Table 4'); default: every one of the paper")
    ap.add_argument("--rows", nargs="+", default=None, help="only these rows")
    argv = list(sys.argv[1:] if argv is None else argv)
    ns = ap.parse_args(argv)
    try:
        opts = options_from(ns, "zoo ablate " + " ".join(argv))
        recs = ablate(ns.paper, ns.dataset, load_numbers(ns.numbers), opts, ns.tables, ns.rows)
    except (KeyError, ValueError, FileNotFoundError) as e:
        print(f"zoo ablate: error: {e}", file=sys.stderr)
        return 2
    return 1 if any(r["status"] == "failed" for r in recs) else 0


if __name__ == "__main__":
    sys.exit(main())
