"""Full-ranking evaluation against its physical limit (issue 7, "Speed").

Full ranking is a ``[users x d] @ [d x items]`` product (``[users*K x d] @ [d x items]`` and a max
over the K interests for multi-interest models).  In one run, for SASRec (``recipes/sasrec.yaml``)
and HORAE (``recipes/horae.yaml``, trained from scratch settings: no pre-trained checkpoint, nothing
frozen; evaluation cost does not depend on the weights), this times

* the zoo's full evaluation, ``Trainer.test`` over every test user (batches, encoder, ranking,
  metrics), and its parts: the encoder (``user_representation``), the ranking (``score_all`` =
  ``dot_scores`` or the chunked ``max_interest_scores``, plus the metric update), and HORAE's
  item-side table (``candidate_embeddings``: MoE adaptor over the text features) that its
  ``score_all`` recomputes for every batch;
* ONE plain product of the same size on random data (``bare``), and the same product per
  evaluation batch (``bare batched``),

and reports each as a multiple of the bare product (goal: within 2x).  Two catalogues:
the embedded default (MovieLens latest-small, 671 users x 3,497 items, real data and, for HORAE,
the real MiniLM text features) and an Office-sized one (synthetic, 25,941 items; the first
``--office-users`` test users; HORAE gets random 384-d text features, timing only).  Every figure
is the median of ``--repeats`` runs after a warm-up.

Usage::

    .venv/bin/python benchmarks/speed_eval.py --out benchmarks/results/speed.md
    .venv/bin/python benchmarks/speed_eval.py --office-users 256 --repeats 1 --out /tmp/speed.md   # smoke
"""

from __future__ import annotations

import argparse
import gc
import shlex
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.speed_common import fmt_bytes, header_md, loadavg, machine_info, update_results_md  # noqa: E402

HORAE_SCRATCH = dict(pretrained_ckpt=None, freeze=[])


def configs(a: argparse.Namespace) -> list[tuple[str, str, str, dict[str, Any], dict[str, Any]]]:
    """(label, dataset label, recipe, model overrides, data overrides)."""
    from benchmarks.speed_zoo import office_atomic

    out = [
        ("SASRec", "MovieLens default", "sasrec", {}, {}),
        ("HORAE", "MovieLens default", "horae", dict(HORAE_SCRATCH), {}),
    ]
    if a.office_users:
        work = Path(a.workdir)
        inter = office_atomic(work / "atomic")
        office = dict(format="atomic", paths={"path": str(inter)}, k_core=5, cache_dir=str(work / "cache"),
                      require_text=False, text_encoder=None)
        out.append(("SASRec", "Office-sized", "sasrec", {}, dict(office)))
        out.append(("HORAE", "Office-sized", "horae", dict(HORAE_SCRATCH), dict(office, text_features="@random")))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--office-users", type=int, default=4096, help="test users on the Office-sized catalogue (0 = skip)")
    ap.add_argument("--workdir", default="/tmp/zoo-speed-scale")
    ap.add_argument("--out", default=None)
    ap.add_argument("--section", default="eval",
                    help="section of --out to replace: 'eval' (the 2-thread reference, every row) or 'eval-fused' "
                         "(the one-thread Office rows, --only Office)")
    ap.add_argument("--only", nargs="*", default=None, help="rows whose 'model data' label contains one of these (e.g. Office)")
    a = ap.parse_args(argv)

    import torch

    from benchmarks.speed_zoo import build, eval_breakdown, limit_eval_users, random_text_features

    torch.manual_seed(0)
    info = machine_info()
    rows = []
    for label, data_label, recipe, m_args, d_args in configs(a):
        if a.only and not any(o in f"{label} {data_label}" for o in a.only):
            continue
        if d_args.get("text_features") == "@random":
            from datamodules.base import SequentialDataModule

            probe = SequentialDataModule(**{k: v for k, v in d_args.items() if k != "text_features"}, max_len=20)
            d_args["text_features"] = str(random_text_features(Path(a.workdir) / "office_text_384.npy",
                                                               probe.num_items + 1))
            del probe
        model, dm = build(recipe, m_args, d_args)
        if data_label != "MovieLens default":
            limit_eval_users(dm, a.office_users)
        load0 = loadavg()
        r = eval_breakdown(model, dm, repeats=a.repeats)
        r.update(model=label, data=data_label, load=f"{load0} → {loadavg()}")
        rows.append(r)
        print(r, flush=True)
        del model, dm
        gc.collect()
    md = render(rows, info, " ".join(shlex.quote(x) for x in [".venv/bin/python", "benchmarks/speed_eval.py"]
                                    + (argv if argv is not None else sys.argv[1:])), a)
    print(md)
    if a.out:
        update_results_md(Path(a.out), a.section, md)


def render(rows: list[dict[str, Any]], info: dict[str, Any], command: str, a: argparse.Namespace) -> str:
    title = {"eval-fused": "Full-ranking evaluation: the fused ranking step (issue 13), one thread"}.get(
        a.section, "Full-ranking evaluation against the bare matrix product")
    lines = [header_md(title, command, info, [
        f"Median of {a.repeats} runs after a warm-up, {rows[0]['threads'] if rows else '?'} threads. `bare` = one "
        "`[users·K × d] @ [d × (N+1)]` product on random data; `bare batched` = the same per evaluation batch.",
        "",
        "`ranking` = `score_all` + the metric update of every batch given the user representations: `before` the "
        "materialise-mask-gather-count step of commit 5c304c9 (kept in `benchmarks/speed_zoo.py`), `fused` the "
        "evaluation's step now (`SequentialRecommender.full_ranks`: one pass of the item-chunked product for "
        "single-vector models, one cache-blocked mask-and-count pass otherwise); the two alternate round by round in "
        "the same process.",
        "",
        "| model | data | users × items (K, d) | bare product s | **full eval / bare** | full eval s | "
        "ranking before / bare | **ranking fused / bare** | encoder / bare | item table recomputed per batch, s | "
        "bare batched / bare | test-loop peak RSS increase | load avg |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ])]
    for r in rows:
        b = r["bare_s"]
        lines.append(
            f"| {r['model']} | {r['data']} | {r['users']:,} × {r['items']:,} ({r['K']}, {r['d']}) | {b:.4f} | "
            f"**{r['full_s'] / b:.2f}** | {r['full_s']:.3f} | {r['ranking_s'] / b:.2f} | **{r['ranking_fused_s'] / b:.2f}** | "
            f"{r['encoder_s'] / b:.2f} | "
            f"{r['candidates_in_eval_s']:.3f} | {r['bare_batched_s'] / b:.2f} | "
            f"{fmt_bytes(r['test_peak_increase_bytes'])} | {r['load']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
