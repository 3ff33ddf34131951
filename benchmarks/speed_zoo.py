"""Zoo-side helpers of the speed benchmarks: recipes -> (model, datamodule), an Office-sized
synthetic dataset, evaluation over a bounded number of users, and the evaluation cost split into
encoder / ranking / the bare ``[users x d] @ [d x items]`` product.

Models and datamodules are built from the recipe YAML exactly as the CLI builds them (the
recipe's ``init_args`` plus overrides; ``num_items`` and ``data_info`` linked from the data), so
what is timed is the zoo's own code path; only the Lightning ``Trainer`` is made here (no logger,
no checkpointing, no progress bar).
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml

from benchmarks.speed_common import REPO, peak_bytes, reset_peak, rss_bytes, timed

#: papers' Office after 5-core (MIRACLE Table 1 / HORAE Table 6)
OFFICE_PAPER = dict(users=87_436, items=25_986, interactions=684_837)
#: generator settings whose 5-core result is Office-sized: 87,665 users, 25,941 items, 686,666
#: interactions (seed DEFAULT_SEED); alpha 0.75 flattens the Zipf tail so that as many items as
#: in Office keep 5 interactions
OFFICE_GEN = dict(users=88_000, items=26_500, interactions=690_000, alpha=0.75)


def _cls(path: str):
    mod, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(mod), name)


def build(recipe: str, model_args: dict[str, Any] | None = None, data_args: dict[str, Any] | None = None):
    """``recipes/<recipe>.yaml`` -> (model, datamodule), with init_args overrides."""
    cfg = yaml.safe_load((REPO / "recipes" / f"{recipe}.yaml").read_text(encoding="utf-8"))
    d_init = {**cfg["data"].get("init_args", {}), **(data_args or {})}
    dm = _cls(cfg["data"]["class_path"])(**d_init)
    m_init = {**cfg["model"].get("init_args", {}), **(model_args or {})}
    model = _cls(cfg["model"]["class_path"])(num_items=dm.num_items, data_info=dm.info, **m_init)
    return model, dm


def office_atomic(workdir: Path, users: int | None = None) -> Path:
    """Write (once) the Office-sized synthetic log as a RecBole atomic ``Office.inter``.

    ``users`` < the generator's keeps only the first ``users`` users (same items, same per-user
    sequences), for measurements at two user counts."""
    from datamodules.atomic import export_atomic
    from datamodules.synthetic import DEFAULT_SEED, generate_log

    name = "Office" if users is None else f"Office_u{users}"
    path = Path(workdir) / name / f"{name}.inter"
    if path.is_file():
        return path
    g = OFFICE_GEN
    log = generate_log(g["users"], g["items"], g["interactions"], np.random.default_rng(DEFAULT_SEED), alpha=g["alpha"])
    keep = np.ones(len(log.user), bool) if users is None else log.user < users
    export_atomic(log.user[keep], log.item[keep] + 1, log.time[keep], path.parent, name)
    return path


def random_text_features(path: Path, rows: int, dim: int = 384, seed: int = 0) -> Path:
    """A ``[rows, dim]`` float32 ``.npy`` feature table with a zero pad row (timing only)."""
    if not path.is_file():
        feats = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
        feats[0] = 0.0
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, feats)
    return path


def limit_eval_users(dm, n_users: int | None) -> None:
    """Evaluate only the users with the ``n_users`` smallest ids (after every setup)."""
    if not n_users:
        return
    original = dm.setup

    def setup(stage: str | None = None) -> None:
        original(stage)
        for ds in dm.eval_sets.values():
            keep = ds.user < n_users  # the users with the n_users smallest ids, in the loader's order
            for attr in ("user", "start", "end", "targets_end", "negatives"):
                v = getattr(ds, attr, None)
                if v is not None:
                    setattr(ds, attr, v[keep])

    dm.setup = setup


def trainer(**kw: Any) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                     num_sanity_val_steps=0, **kw)


def n_interests(model, rep: Any) -> int:
    """Interests per user of a representation (1 for single-vector models)."""
    t = rep[0] if isinstance(rep, tuple) else rep
    return int(t.shape[1]) if t.dim() == 3 else 1


@torch.no_grad()
def eval_breakdown(model, dm, repeats: int = 3) -> dict[str, Any]:
    """Full evaluation (``trainer.test``) and its parts, each the median of ``repeats`` runs.

    * ``full_s``: ``Trainer.test`` over the test users (loading batches, encoder, ranking, metrics);
    * ``encoder_s``: ``user_representation`` of every batch (batches gathered beforehand);
    * ``ranking_s``: ``score_all`` + the metric update of every batch, given the representations;
    * ``candidates_s``: one call of the model's item-side table (``candidate_embeddings``) where the
      model recomputes it inside ``score_all`` (MIRACLE/HORAE), else 0;
    * ``bare_s``: ONE plain ``[users*K, d] @ [d, N+1]`` product (random data, same sizes);
    * ``bare_batched_s``: the same product per evaluation batch, as the zoo batches users.
    Also the test loop's own peak RSS increase (VmHWM reset at its start).
    """
    from zoo.metrics import RankingMetrics

    tr = trainer()
    dm.setup("test")
    loader = dm.test_dataloader()
    tr.test(model, datamodule=dm, verbose=False)  # warm-up (also attaches side info)
    full = []
    peak = 0
    for _ in range(repeats):
        rss0 = rss_bytes()
        reset_peak()
        t0 = time.perf_counter()
        tr.test(model, datamodule=dm, verbose=False)
        full.append(time.perf_counter() - t0)
        peak = max(peak, peak_bytes() - rss0)
    model.eval()
    batches = list(loader)
    n_users = sum(int(b["user"].shape[0]) for b in batches)

    def encoder() -> list[Any]:
        return [model.user_representation(b) for b in batches]

    reps = encoder()
    metric = RankingMetrics(ks=model.topk)

    def ranking() -> None:  # the ranking step before it was fused: materialise, mask, gather, count
        for b, r in zip(batches, reps):
            s = model.score_all(r).float()
            s[:, 0] = float("-inf")
            metric.update(s, b["target"])

    def ranking_fused() -> None:  # the evaluation's ranking step now (SequentialRecommender.full_ranks)
        for b, r in zip(batches, reps):
            metric.update(ranks=model.full_ranks(r, b))

    def ranking_interleaved(rounds: int) -> tuple[float, float]:
        """Median old and fused times, alternated round by round (the same machine load for both)."""
        old, new = [], []
        ranking(); ranking_fused()
        for _ in range(rounds):
            for fn, out in ((ranking, old), (ranking_fused, new)):
                t0 = time.perf_counter(); fn(); out.append(time.perf_counter() - t0)
        return float(np.median(old)), float(np.median(new))

    def med(fn) -> float:
        return timed(fn, repeats=repeats, warmup=1)["median_s"]

    K = n_interests(model, reps[0])
    first = reps[0][0] if isinstance(reps[0], tuple) else reps[0]
    d = int(first.shape[-1])
    N1 = model.num_items + 1
    A = torch.randn(n_users * K, d)
    B = torch.randn(d, N1)
    bs = int(batches[0]["user"].shape[0])
    A_b = [torch.randn(int(b["user"].shape[0]) * K, d) for b in batches]
    cand = 0.0
    if hasattr(model, "candidate_embeddings"):
        cand = med(lambda: model.candidate_embeddings())
    bare_s = med(lambda: A @ B)
    ranking_s, ranking_fused_s = ranking_interleaved(max(repeats, 3))
    return dict(
        users=n_users, items=N1, d=d, K=K, eval_batch=bs, batches=len(batches),
        full_s=float(np.median(full)), encoder_s=med(encoder), ranking_s=ranking_s, ranking_fused_s=ranking_fused_s,
        candidates_s=cand,
        candidates_in_eval_s=cand * len(batches) if hasattr(model, "candidate_embeddings") else 0.0,
        bare_s=bare_s, bare_batched_s=med(lambda: [a @ B for a in A_b]),
        test_peak_increase_bytes=peak, threads=torch.get_num_threads(),
    )
