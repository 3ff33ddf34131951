"""How personal are a model's recommendations?  Measures a popularity collapse from `zoo predict`.

For each run folder holding ``predictions.csv`` (and, for multi-interest models, ``interests.pt``)
written by ``zoo predict``, it reports:

* **consensus overlap@k**: the mean share of a user's top-k that lies in the *consensus* top-k
  (the k items that appear in most users' top-k lists).  1.0 = every user gets the same list (a
  popularity ranking, history filtering aside); a personalised model scores well below 1.
* **distinct items@k**: how many different items appear across all users' top-k lists.
* for multi-interest models, the interest vectors' norms (min / mean / max over users and
  interests) and the **shared direction**: the norm of the mean of the users' unit interest
  vectors, per interest slot, averaged (1.0 = every user has the same interest directions).

    zoo predict --config <run>/recipe.yaml --ckpt_path <run>/best.ckpt --run_dir /tmp/pred_<name>
    python benchmarks/collapse.py /tmp/pred_<name> ... [--k 50] [--out report.md]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import torch


def read_topk(path: Path, k: int) -> list[list[str]]:
    """``predictions.csv`` -> each user's top-k item ids (the file's own order, best first)."""
    lines = path.read_text().splitlines()
    if not lines or not lines[0].startswith("user,items"):
        raise ValueError(f"{path}: expected a 'user,items,scores' header written by zoo predict")
    out = []
    for n, line in enumerate(lines[1:], start=2):
        parts = line.split(",")
        if len(parts) < 2:
            raise ValueError(f"{path}:{n}: expected 'user,items,scores', got {line[:80]!r}")
        items = parts[1].split()
        if len(items) < k:
            raise ValueError(f"{path}:{n}: {len(items)} items, fewer than --k {k} (re-run zoo predict with a larger top-k)")
        out.append(items[:k])
    return out


def consensus_overlap(lists: list[list[str]], k: int) -> tuple[float, int]:
    """(mean |top_k ∩ consensus_k| / k, number of distinct items over all lists)."""
    counts = Counter(i for items in lists for i in items)
    consensus = {i for i, _ in counts.most_common(k)}
    return sum(len(consensus.intersection(items)) for items in lists) / (k * len(lists)), len(counts)


def interest_stats(path: Path) -> dict[str, float]:
    """Norms and shared direction of ``interests.pt`` ``[U, K, d]``."""
    V = torch.load(path, map_location="cpu", weights_only=True).float()  # [U, K, d]
    if V.dim() != 3:
        raise ValueError(f"{path}: expected [users, interests, d], got {tuple(V.shape)}")
    norms = V.norm(dim=-1)  # [U, K]
    unit = torch.nn.functional.normalize(V, dim=-1)
    return {"norm_min": norms.min().item(), "norm_mean": norms.mean().item(), "norm_max": norms.max().item(),
            "shared_direction": unit.mean(0).norm(dim=-1).mean().item()}


def report(folders: list[Path], k: int) -> list[str]:
    lines = [f"| run | users | consensus overlap@{k} | distinct items@{k} | interest norm min / mean / max | shared direction |",
             "|---|---|---|---|---|---|"]
    for folder in folders:
        stamped = sorted(folder.glob("predictions-*.csv"))  # zoo predict: predictions-<stamp>.csv, newest last
        pred = stamped[-1] if stamped else folder / "predictions.csv"
        if not pred.is_file():
            raise FileNotFoundError(f"{pred} does not exist (run `zoo predict ... --run_dir {folder}` first)")
        lists = read_topk(pred, k)
        overlap, distinct = consensus_overlap(lists, k)
        norms, shared = "—", "—"
        interests = pred.with_name(pred.name.replace("predictions", "interests", 1).removesuffix(".csv") + ".pt")
        if interests.is_file():
            st = interest_stats(interests)
            norms = f"{st['norm_min']:.2f} / {st['norm_mean']:.2f} / {st['norm_max']:.2f}"
            shared = f"{st['shared_direction']:.2f}"
        lines.append(f"| {folder.name} | {len(lists)} | {overlap:.3f} | {distinct} | {norms} | {shared} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folders", nargs="+", type=Path, help="zoo predict output folders")
    ap.add_argument("--k", type=int, default=50, help="list length (at most zoo predict's top-k)")
    ap.add_argument("--out", type=Path, default=None, help="markdown file (default: stdout)")
    args = ap.parse_args(argv)
    text = "\n".join(report(args.folders, args.k)) + "\n"
    if args.out is None:
        sys.stdout.write(text)
        return
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(text)
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
