"""Shared test fixtures: tiny left-padded batches in the datamodule's batch contract."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `model_checks`


@pytest.fixture(autouse=True)
def _offline_wandb(tmp_path_factory, monkeypatch):
    """No test ever reaches the network: W&B offline, HF hub offline, W&B files in a temp dir."""
    wb = tmp_path_factory.mktemp("wandb")
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(wb))
    monkeypatch.setenv("WANDB_MODE", os.environ.get("WANDB_MODE", "offline"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def make_batch(
    B: int = 8,
    L: int = 10,
    num_items: int = 50,
    seed: int = 0,
    min_len: int = 2,
    n_targets: int = 0,
    n_neg: int = 0,
) -> dict[str, torch.Tensor]:
    """A random batch following the contract in ``zoo/models/base.py`` (left padding)."""
    g = torch.Generator().manual_seed(seed)
    seq_len = torch.randint(min_len, L + 1, (B,), generator=g)  # [B]
    item_seq = torch.randint(1, num_items + 1, (B, L), generator=g)
    pos = torch.arange(L).expand(B, L)
    pad = pos < (L - seq_len)[:, None]  # left padding
    item_seq = item_seq.masked_fill(pad, 0)
    gaps = torch.randint(0, 5 * 86400, (B, L), generator=g)
    time_seq = (1_500_000_000 + gaps.cumsum(1)).masked_fill(pad, 0)
    batch = {
        "user": torch.arange(B),
        "item_seq": item_seq,
        "time_seq": time_seq,
        "seq_len": seq_len,
        "target": torch.randint(1, num_items + 1, (B,), generator=g),
        "target_time": time_seq[:, -1] + 3600,
        "history_items": item_seq.clone(),
    }
    if n_targets:
        batch["targets"] = torch.randint(1, num_items + 1, (B, n_targets), generator=g)
    if n_neg:
        batch["neg_items"] = torch.randint(1, num_items + 1, (B, n_neg), generator=g)
    return batch


@pytest.fixture
def batch():
    return make_batch()


def write_movielens_latest(folder: Path, n_users: int = 40, n_items: int = 60, per_user: int = 15, seed: int = 0) -> Path:
    """Write a small MovieLens ``ratings.csv``/``movies.csv`` pair in GroupLens' exact format."""
    import numpy as np

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    genres = ["Action", "Comedy", "Drama", "Romance", "Sci-Fi", "Thriller"]
    lines = ["movieId,title,genres"]
    for i in range(1, n_items + 1):
        g = "|".join(sorted(rng.choice(genres, size=rng.integers(1, 3), replace=False)))
        lines.append(f'{i},"Movie {i}, The ({1980 + i % 30})",{g}')
    (folder / "movies.csv").write_text("\n".join(lines) + "\n")
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.8
    rows = ["userId,movieId,rating,timestamp"]
    for u in range(1, n_users + 1):
        items = rng.choice(np.arange(1, n_items + 1), size=per_user, replace=False, p=pop / pop.sum())
        t0 = 1_000_000_000 + int(rng.integers(0, 10**7))
        for j, it in enumerate(items):
            rows.append(f"{u},{it},{rng.integers(1, 6)}.0,{t0 + 3600 * j}")
    (folder / "ratings.csv").write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture(scope="session")
def ml_folder(tmp_path_factory) -> Path:
    return write_movielens_latest(tmp_path_factory.mktemp("ml-latest-tiny"))
