"""Per-user test results: the ``ranks.npz`` beside a run's test metrics, and per-user metrics from it.

A test writes each test user's 0-based pessimistic rank(s) of the target(s) (the tie rule of
:mod:`zoo.metrics`), keyed by the publisher's ORIGINAL user id, so any metric of the run can be
recomputed per user (confidence intervals, paired tests: ``zoo compare``).  Arrays in the file
(``np.load(path, allow_pickle=False)`` reads it):

============== ========= ==============================================================
protocol       []        ``full`` (one target among all items), ``sampled`` (the target among
                         its candidates: itself + the seeded negatives) or ``multi`` (several
                         targets per user among all items: the ComiRec protocol)
user_id        [U]       original user ids (str), one row per test user
rank           [U]|[R]   full/sampled: each user's rank; multi: the ranks of every user's
                         DISTINCT targets, flat, user after user
offsets        [U+1]     multi only: user u's ranks are ``rank[offsets[u]:offsets[u+1]]``
n_targets      [U]       multi only: |T| counting repeated targets (Recall's denominator)
n_candidates   []        items ranked per user (N under full/multi, 1 + negatives when sampled)
ks             [nK]      the run's top-K cut-offs
============== ========= ==============================================================

:func:`per_user` turns it into one value per user for any metric the test logged; the mean over
users equals the run's ``test/<metric>`` (tests/test_ranks.py checks it for every protocol).
Numpy only: reading results needs no torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zoo.runfiles import atomic_write

PROTOCOLS = ("full", "sampled", "multi")
METRICS = {"full": ("hr", "recall", "ndcg", "mrr"), "sampled": ("hr", "recall", "ndcg", "mrr"),
           "multi": ("recall", "ndcg", "ndcg_comirec", "hr")}


@dataclass
class Ranks:
    """The content of one ranks file (see the module docstring for the fields)."""

    protocol: str
    user_id: np.ndarray  # [U] str
    rank: np.ndarray  # [U] (full/sampled) or [R] flat (multi), int64
    n_candidates: int
    ks: list[int]
    offsets: np.ndarray | None = None  # [U+1] int64 (multi)
    n_targets: np.ndarray | None = None  # [U] int64 (multi)
    path: Path | None = None

    @property
    def num_users(self) -> int:
        return len(self.user_id)

    def metric_names(self) -> list[str]:
        """The metrics the run's test logged, e.g. ``["hr@10", "mrr@10", "ndcg@10", ...]``."""
        return [f"{m}@{k}" for k in self.ks for m in METRICS[self.protocol]]


# ----------------------------------------------------------------------------- collecting
def batch_ranks(entry: dict[str, Any], users: Any) -> dict[str, np.ndarray]:
    """One ``rank_sink`` entry of :mod:`zoo.metrics` + the batch's user indices -> numpy parts."""
    users = users.detach().cpu().numpy().astype(np.int64)
    if "rows" not in entry:  # RankingMetrics: {"rank": [B]}
        return {"user": users, "rank": entry["rank"].cpu().numpy().astype(np.int64)}
    rows = entry["rows"].cpu().numpy()
    rank = entry["rank"].cpu().numpy().astype(np.int64)  # [B', T], -1 = not a distinct target
    keep = rank >= 0
    return {"user": users[rows], "rank": rank[keep], "count": keep.sum(1).astype(np.int64),
            "n_targets": entry["n_targets"].cpu().numpy().astype(np.int64)}


def concat_parts(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate :func:`batch_ranks` parts (in evaluation order) into one user table."""
    if not parts:
        return {}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def make_ranks(protocol: str, parts: dict[str, np.ndarray], user_ids: list[str], n_candidates: int,
               ks: list[int]) -> Ranks:
    """Assemble a :class:`Ranks` from concatenated parts, mapping user indices to original ids."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    users = parts["user"]
    if len(users) and (users.min() < 0 or users.max() >= len(user_ids)):
        raise ValueError(f"user index {int(users.max())} outside the dataset's {len(user_ids)} users")
    ids = np.asarray([str(user_ids[u]) for u in users], dtype=str)
    if len(np.unique(ids)) != len(ids):
        raise ValueError("a test user was evaluated twice (expected one test row per user)")
    if protocol != "multi":
        return Ranks(protocol, ids, parts["rank"], int(n_candidates), list(ks))
    offsets = np.concatenate([[0], np.cumsum(parts["count"])]).astype(np.int64)
    return Ranks(protocol, ids, parts["rank"], int(n_candidates), list(ks), offsets, parts["n_targets"])


# ----------------------------------------------------------------------------- files
def save_ranks(path: str | Path, r: Ranks) -> Path:
    """Write ``r`` to ``path`` atomically (a temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {
        "protocol": np.asarray(r.protocol), "user_id": np.asarray(r.user_id, dtype=str),
        "rank": np.asarray(r.rank, dtype=np.int64), "n_candidates": np.asarray(r.n_candidates, dtype=np.int64),
        "ks": np.asarray(r.ks, dtype=np.int64),
    }
    if r.protocol == "multi":
        arrays["offsets"] = np.asarray(r.offsets, dtype=np.int64)
        arrays["n_targets"] = np.asarray(r.n_targets, dtype=np.int64)
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))
    return path


def load_ranks(path: str | Path) -> Ranks:
    """Read a ranks file (no pickles), with a clear error naming the file when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no per-user ranks file at '{path}' (written by `zoo test` / the test after `zoo fit`)")
    try:
        with np.load(path, allow_pickle=False) as z:
            a = {k: z[k] for k in z.files}
    except Exception as e:  # truncated or not an npz
        raise ValueError(f"'{path}' is not a readable ranks file ({e})") from e
    need = {"protocol", "user_id", "rank", "n_candidates", "ks"}
    protocol = str(a["protocol"]) if "protocol" in a else None
    if protocol == "multi":
        need |= {"offsets", "n_targets"}
    if not need <= a.keys() or protocol not in PROTOCOLS:
        raise ValueError(f"'{path}': expected arrays {sorted(need)} with protocol in {PROTOCOLS}; "
                         f"found {sorted(a)} (protocol {protocol!r})")
    r = Ranks(protocol, a["user_id"].astype(str), a["rank"].astype(np.int64), int(a["n_candidates"]),
              [int(k) for k in a["ks"]], a.get("offsets"), a.get("n_targets"), path)
    U = r.num_users
    if protocol == "multi":
        ok = len(r.offsets) == U + 1 and len(r.n_targets) == U and r.offsets[-1] == len(r.rank) \
            and (np.diff(r.offsets) > 0).all()
    else:
        ok = len(r.rank) == U
    if not ok:
        raise ValueError(f"'{path}': inconsistent array lengths for {U} users (rank {len(r.rank)})")
    return r


# ----------------------------------------------------------------------------- per-user metrics
def _discounts(n: int) -> np.ndarray:
    """``[n+1]`` cumulative ideal DCG: ``c[m] = sum_{i<m} 1/log2(i+2)``."""
    return np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(n) + 2.0))])


def parse_metric(name: str) -> tuple[str, int]:
    """``"test/ndcg@10"`` or ``"ndcg@10"`` -> ``("ndcg", 10)``."""
    m = re.fullmatch(r"(?:test/)?([a-z_]+)@(\d+)", name.strip())
    if not m:
        raise ValueError(f"metric {name!r}: expected NAME@K such as ndcg@10")
    return m.group(1), int(m.group(2))


def per_user(r: Ranks, metric: str) -> np.ndarray:
    """``[U]`` float64: each user's value of ``metric`` (``hr@10``, ``ndcg@20``, ``mrr@10``,
    ``recall@50``, ``ndcg_comirec@20``), exactly as :mod:`zoo.metrics` averages it."""
    name, k = parse_metric(metric)
    if name not in METRICS[r.protocol]:
        raise ValueError(f"metric {metric!r} is not defined for the {r.protocol} protocol "
                         f"(available: {', '.join(METRICS[r.protocol])} @K)")
    rank = r.rank.astype(np.float64)
    hit = r.rank < k
    if r.protocol != "multi":
        if name in ("hr", "recall"):
            return hit.astype(np.float64)
        if name == "ndcg":
            return np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0)
        return np.where(hit, 1.0 / (rank + 1.0), 0.0)  # mrr
    starts = r.offsets[:-1]
    n_hit = np.add.reduceat(hit.astype(np.int64), starts)  # [U] distinct targets in the top K
    if name == "recall":
        return n_hit / r.n_targets
    if name == "hr":
        return (n_hit > 0).astype(np.float64)
    dcg = np.add.reduceat(np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0), starts)
    ideal = _discounts(k)
    if name == "ndcg":
        return dcg / ideal[np.minimum(np.diff(r.offsets), k)]
    return np.where(n_hit > 0, dcg / np.maximum(ideal[np.minimum(n_hit, k)], 1e-12), 0.0)  # ndcg_comirec
