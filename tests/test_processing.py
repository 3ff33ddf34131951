"""The shared processing pipeline (``datamodules/processing.py``) on hand-built raw datasets.

Every expected value below was worked out by hand from the fixture rows written next to it:
iterative k-core (with a second round forced by item removal), ``require_text``,
``min_seq_len``, empty-result errors, the stable per-user time sort, id remapping in sorted order
of the publisher's (string) ids, timestamp and category alignment, the user_split groups, and the
atomic cache (a crash mid-write leaves nothing that loads and no temporary directory).

Targets for REAL data (the papers' dataset statistics after their processing; no such raw file can
be had on this machine, so they are checked by users with `zoo data prepare` on the publishers'
files; the fixtures here test the same code exactly):

* MIRACLE/HORAE (Amazon 2018, require_text + 5-core, LOO; MIRACLE Table 1, HORAE Table 6):
  Scientific 8,442 users / 4,385 items / 59,427 interactions; Pantry 13,101 / 4,898 / 126,962;
  Instruments 24,962 / 9,964 / 208,926; Arts 45,486 / 21,019 / 395,150; Office 87,436 / 25,986 /
  684,837; Online Retail (user = InvoiceNo) 16,520 / 3,469 / 519,906; pre-training mix Food +
  CDs + Kindle + Movies + Home: 1,361,408 / 446,975 / 14,029,229.
* HM4SR (Amazon 2014 5-core, Table 2): Toys 19,412 / 11,924 / 167,597; Games 24,303 / 10,672 /
  231,780; Beauty 22,363 / 12,101 / 198,502; Home 66,520 / 28,238 / 551,682 (the paper's counts
  may include RecBole's pad row: +1 user and item).
* TiMiRec (Table 1): Beauty 22,363 / 12,101 / 198,502; MovieLens-1M 6,040 / 3,706 / 1,000,209.
* HPCL4SR (Table 1, >= 12 interactions): Amazon-Clothing 129,827 users / 293,446 items / 499
  categories / 3,046,500 interactions; Tmall-Buy 356,795 / 311,746 / 1,442 / 35,012,248; Tafeng
  17,590 / 10,176 / 1,297 / 674,685.
* The embedded default is checked for real in tests/test_datamodule.py: MovieLens latest-small
  5-core = 671 users / 3,496 items / 90,072 interactions.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from datamodules import processing
from datamodules.processing import (
    EmptyDatasetError,
    ProcessingOptions,
    k_core_filter,
    load_cache,
    process,
    write_cache,
)
from datamodules.raw import RawDataset


def raw_dataset(rows: list[tuple[str, str, int]], items: list[tuple[str, object, list[str]]] | None = None) -> RawDataset:
    """A RawDataset in the parser contract from ``(user, item, timestamp)`` rows (raw order kept)."""
    inter = pd.DataFrame(rows, columns=["user", "item", "timestamp"]).astype({"timestamp": "int64"})
    table = None
    if items is not None:
        table = pd.DataFrame({
            "item": [i for i, _, _ in items],
            "text": pd.Series([t for _, t, _ in items], dtype=object),
            "categories": pd.Series([c for _, _, c in items], dtype=object),
        })
    return RawDataset(name="tiny", interactions=inter, items=table)


def seqs(result: dict) -> list[list[int]]:
    a = result["arrays"]
    p = a["user_ptr"]
    return [a["items"][p[u] : p[u + 1]].tolist() for u in range(len(p) - 1)]


# --------------------------------------------------------------------------- k-core
# k = 2.  u1: a b | u2: a b | u3: b c | u4: c x
# round 1: items a2 b3 c2 x1 -> drop x (1); users u4 now has only c -> drop u4 (1)
# round 2: items a2 b3 c1 -> drop c (u3's, 1); users u3 now has only b -> drop u3 (1)
# round 3: a2 b2, u1 2, u2 2: stable.  Result: u1, u2 x (a, b) = 2 users, 2 items, 4 interactions.
KCORE_ROWS = [
    ("u1", "a", 1), ("u1", "b", 2),
    ("u2", "a", 1), ("u2", "b", 2),
    ("u3", "b", 1), ("u3", "c", 2),
    ("u4", "c", 1), ("u4", "x", 2),
]


def test_k_core_is_iterative_with_per_round_log():
    inter = pd.DataFrame(KCORE_ROWS, columns=["user", "item", "timestamp"])
    out, log = k_core_filter(inter, k_core=2, min_user=2)
    assert sorted(map(tuple, out[["user", "item"]].to_numpy().tolist())) == [
        ("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "b")
    ]
    assert log == [
        "k-core round 1: -1 interactions (items < 2), -1 (users < 2)",
        "k-core round 2: -1 interactions (items < 2), -1 (users < 2)",
    ]
    # a single pass would have kept u3 (b, c): the second round matters
    one_pass = inter[inter["item"].map(inter["item"].value_counts()) >= 2]
    one_pass = one_pass[one_pass["user"].map(one_pass["user"].value_counts()) >= 2]
    assert "u3" in set(one_pass["user"])


def test_k_core_single_pass_is_comirecs_one_round():
    """k_core_mode='single_pass' (ComiRec/REMI preprocessing, HPCL4SR): items counted once on the raw
    log, then users on the kept items, no second round: u3 (b, c) stays although c ends with 1 user."""
    inter = pd.DataFrame(KCORE_ROWS, columns=["user", "item", "timestamp"])
    out, log = k_core_filter(inter, k_core=2, min_user=2, single_pass=True)
    assert sorted(map(tuple, out[["user", "item"]].to_numpy().tolist())) == [
        ("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "b"), ("u3", "b"), ("u3", "c")
    ]
    assert log == ["k-core round 1: -1 interactions (items < 2), -1 (users < 2)"]
    s = process(raw_dataset(KCORE_ROWS), ProcessingOptions(k_core=2, k_core_mode="single_pass"))["stats"]
    assert (s["num_users"], s["num_items"], s["num_interactions"]) == (3, 3, 6)
    # the new option at its default leaves every existing cache key as it was (the key of the options
    # without it); another value gives another cache
    import hashlib
    import json
    from dataclasses import asdict

    from datamodules.processing import CACHE_VERSION, cache_key

    before = {k: v for k, v in asdict(ProcessingOptions(k_core=2)).items() if k != "k_core_mode"}
    ident = {"version": CACHE_VERSION, "format": "f", "files": {}, "format_options": {}, "options": before, "extra": None}
    assert cache_key("f", {}, {}, ProcessingOptions(k_core=2)) == hashlib.sha1(
        json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:12]
    assert cache_key("f", {}, {}, ProcessingOptions(k_core=2)) != cache_key("f", {}, {}, ProcessingOptions(
        k_core=2, k_core_mode="single_pass"))
    with pytest.raises(ValueError, match="k_core_mode"):
        ProcessingOptions(k_core_mode="twice")


def test_process_counts_after_k_core():
    r = process(raw_dataset(KCORE_ROWS), ProcessingOptions(k_core=2))
    s = r["stats"]
    assert (s["num_users"], s["num_items"], s["num_interactions"]) == (2, 2, 4)
    assert r["user_ids"] == ["u1", "u2"] and r["item_ids"] == ["a", "b"]
    assert seqs(r) == [[1, 2], [1, 2]]
    assert s["log"][0] == "raw: 8 interactions, 4 users, 4 items"
    assert "k-core round 2: -1 interactions (items < 2), -1 (users < 2)" in s["log"]
    assert s["avg_len"] == 2.0 and s["min_seq_len"] == 2 and s["max_seq_len"] == 2


# --------------------------------------------------------------------------- require_text / min_seq_len
# u1: a b c | u2: a c d | u3: b e      texts: a "A", b "" , c "C", d NaN, e not in the item table
TEXT_ROWS = [
    ("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 3),
    ("u2", "a", 1), ("u2", "c", 2), ("u2", "d", 3),
    ("u3", "b", 1), ("u3", "e", 2),
]
TEXT_ITEMS = [("a", "A", []), ("b", "", []), ("c", "C", []), ("d", np.nan, [])]


def test_require_text_drops_items_without_text():
    r = process(raw_dataset(TEXT_ROWS, TEXT_ITEMS), ProcessingOptions(k_core=1, require_text=True))
    s = r["stats"]
    # kept: u1 a c, u2 a c (b, d, b, e removed = 4)
    assert (s["num_users"], s["num_items"], s["num_interactions"]) == (2, 2, 4)
    assert r["item_ids"] == ["a", "c"] and r["texts"] == ["A", "C"]
    assert "require_text: -4 interactions with items without text" in s["log"]
    assert s["items_with_text"] == 2
    # without the switch nothing is dropped and text-less items keep an empty text
    r = process(raw_dataset(TEXT_ROWS, TEXT_ITEMS), ProcessingOptions(k_core=1))
    assert r["stats"]["num_interactions"] == 8
    assert r["item_ids"] == ["a", "b", "c", "d", "e"] and r["texts"] == ["A", "", "C", "", ""]
    assert r["stats"]["items_with_text"] == 2


def test_min_seq_len_drops_short_users():
    r = process(raw_dataset(TEXT_ROWS), ProcessingOptions(k_core=1, min_seq_len=3))
    s = r["stats"]
    # u3 (2 interactions) goes; u1 a b c + u2 a c d remain
    assert (s["num_users"], s["num_items"], s["num_interactions"]) == (2, 4, 6)
    assert r["user_ids"] == ["u1", "u2"]
    assert "k-core round 1: -0 interactions (items < 1), -2 (users < 3)" in s["log"]
    assert s["options"]["min_seq_len"] == 3


def test_empty_result_names_the_filter_and_numbers():
    with pytest.raises(EmptyDatasetError, match=r"5-core filtering \(users >= 5, items >= 5\) removed all 8 interactions"):
        process(raw_dataset(TEXT_ROWS), ProcessingOptions(k_core=5))
    with pytest.raises(EmptyDatasetError, match=r"users >= 4, items >= 1\) removed all 8"):
        process(raw_dataset(TEXT_ROWS), ProcessingOptions(k_core=1, min_seq_len=4))
    no_text = [(i, "", []) for i in "abcde"]
    with pytest.raises(EmptyDatasetError, match=r"require_text removed all 8 interactions"):
        process(raw_dataset(TEXT_ROWS, no_text), ProcessingOptions(k_core=1, require_text=True))
    with pytest.raises(EmptyDatasetError, match=r"require_text is true but the format provides no item text"):
        process(raw_dataset(TEXT_ROWS), ProcessingOptions(k_core=1, require_text=True))
    with pytest.raises(EmptyDatasetError, match="no interactions"):
        process(raw_dataset([]), ProcessingOptions(k_core=1))


def test_options_are_validated():
    with pytest.raises(ValueError, match="data.protocol"):
        ProcessingOptions(protocol="random")
    with pytest.raises(ValueError, match="data.k_core"):
        ProcessingOptions(k_core=0)
    with pytest.raises(ValueError, match="data.split_ratio"):
        ProcessingOptions(split_ratio=(0.8, 0.1, 0.2))


# --------------------------------------------------------------------------- sort, remap, alignment
# raw order matters for ties: u1 has A10 then A02 at t=20; u2 has A02 then A10 at t=10.
SORT_ROWS = [
    ("u2", "B07", 50),
    ("u1", "A10", 20),
    ("u1", "A02", 20),
    ("u1", "C01", 5),
    ("u2", "A02", 10),
    ("u1", "B07", 30),
    ("u2", "A10", 10),
]
# new ids in sorted order of the original ids: A02 -> 1, A10 -> 2, B07 -> 3, C01 -> 4
# category vocabulary sorted: Books 1, Electronics 2, Europe 3, Fiction 4, History 5 (Toys: unused item)
SORT_ITEMS = [
    ("C01", "gamma", ["Books", "History", "Europe"]),
    ("Z99", "never bought", ["Toys"]),
    ("A10", "", ["Electronics"]),
    ("A02", "alpha", ["Books", "Fiction"]),
    ("B07", "beta", []),
    ("A02", "a duplicate row: ignored", ["Toys"]),
]


def test_stable_time_sort_remap_and_time_alignment():
    r = process(raw_dataset(SORT_ROWS, SORT_ITEMS), ProcessingOptions(k_core=1))
    a = r["arrays"]
    assert r["user_ids"] == ["u1", "u2"]
    assert r["item_ids"] == ["A02", "A10", "B07", "C01"]
    assert a["user_ptr"].tolist() == [0, 4, 7]
    # u1: C01(5) A10(20) A02(20, after A10 in the raw file) B07(30); u2: A02(10) A10(10) B07(50)
    assert a["items"].tolist() == [4, 2, 1, 3, 1, 2, 3]
    assert a["times"].tolist() == [5, 20, 20, 30, 10, 10, 50]
    assert 0 not in a["items"] and a["items"].max() == r["stats"]["num_items"] == 4
    assert r["texts"] == ["alpha", "", "beta", "gamma"]  # aligned with new ids 1..4
    assert r["stats"]["time_span"] == [5, 50]
    assert a["user_group"].tolist() == [0, 0]  # leave_one_out stores no groups


def test_remap_uses_string_order_of_publisher_ids():
    """Ids are strings in the parser contract, so '10' sorts before '9' (documented choice)."""
    rows = [("7", "9", 1), ("7", "10", 2), ("12", "10", 1), ("12", "9", 2)]
    r = process(raw_dataset(rows), ProcessingOptions(k_core=1))
    assert r["item_ids"] == ["10", "9"] and r["user_ids"] == ["12", "7"]
    assert seqs(r) == [[1, 2], [2, 1]]  # user '12': 10 then 9; user '7': 9 then 10


@pytest.mark.parametrize(
    "level, primary",
    [
        (0, [0, 1, 2, 0, 1]),  # A02 Books, A10 Electronics, B07 none, C01 Books
        (1, [0, 4, 0, 0, 5]),  # A02 Fiction, A10 has no 2nd level, C01 History
        (-1, [0, 4, 2, 0, 3]),  # the last level: Fiction, Electronics, -, Europe
    ],
)
def test_categories_align_with_new_ids(level, primary):
    r = process(raw_dataset(SORT_ROWS, SORT_ITEMS), ProcessingOptions(k_core=1, category_level=level))
    a = r["arrays"]
    assert r["categories"] == ["Books", "Electronics", "Europe", "Fiction", "History"]
    assert r["stats"]["num_categories"] == 5
    assert a["item_category"].tolist() == primary
    # CSR multi-hot: item i's categories are cat_ids[cat_ptr[i]:cat_ptr[i+1]]; row 0 is padding
    assert a["cat_ptr"].tolist() == [0, 0, 2, 3, 3, 6]
    assert a["cat_ids"].tolist() == [1, 4, 2, 1, 5, 3]
    per_item = [a["cat_ids"][a["cat_ptr"][i] : a["cat_ptr"][i + 1]].tolist() for i in range(5)]
    assert per_item == [[], [1, 4], [2], [], [1, 5, 3]]


# --------------------------------------------------------------------------- user_split groups
def _many_users(U: int) -> RawDataset:
    return raw_dataset([(f"u{u:02d}", f"i{j}", j) for u in range(U) for j in range(3)])


def test_user_split_groups_are_8_1_1_and_seeded():
    opts = ProcessingOptions(k_core=1, protocol="user_split", split_seed=7)
    g = process(_many_users(20), opts)["arrays"]["user_group"]
    assert np.bincount(g, minlength=3).tolist() == [16, 2, 2]
    again = process(_many_users(20), opts)["arrays"]["user_group"]
    assert np.array_equal(g, again)
    other = process(_many_users(20), ProcessingOptions(k_core=1, protocol="user_split", split_seed=8))
    assert not np.array_equal(g, other["arrays"]["user_group"])
    assert np.bincount(other["arrays"]["user_group"], minlength=3).tolist() == [16, 2, 2]
    g10 = process(_many_users(10), ProcessingOptions(k_core=1, protocol="user_split"))["arrays"]["user_group"]
    assert np.bincount(g10, minlength=3).tolist() == [8, 1, 1]


# --------------------------------------------------------------------------- the cache on disk
def test_cache_round_trip(tmp_path):
    r = process(raw_dataset(SORT_ROWS, SORT_ITEMS), ProcessingOptions(k_core=1))
    final = write_cache(r, tmp_path / "tiny-abc")
    d = load_cache(final)
    assert d.num_users == 2 and d.num_items == 4
    assert d.items.tolist() == [4, 2, 1, 3, 1, 2, 3] and d.times.tolist() == [5, 20, 20, 30, 10, 10, 50]
    assert d.item_ids == ["A02", "A10", "B07", "C01"] and d.texts == ["alpha", "", "beta", "gamma"]
    assert d.stats["cache_path"] == str(final)
    summary = (final / "summary.md").read_text()
    assert "- users: 2" in summary and "- items: 4" in summary and "- interactions: 7" in summary
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-abc"]  # no temporary directory left


@pytest.mark.parametrize("crash_in", ["savez", "json_dump", "summary", "rename"])
def test_crash_mid_write_leaves_nothing_that_loads(tmp_path, monkeypatch, crash_in):
    r = process(raw_dataset(SORT_ROWS, SORT_ITEMS), ProcessingOptions(k_core=1))

    def boom(*a, **k):
        raise KeyboardInterrupt("killed mid-write")

    if crash_in == "savez":
        monkeypatch.setattr(processing.np, "savez", boom)
    elif crash_in == "json_dump":
        calls = {"n": 0}
        real = json.dump

        def dump_then_die(*a, **k):  # the second json file dies half-way
            calls["n"] += 1
            if calls["n"] == 2:
                a[1].write('["half')
                boom()
            return real(*a, **k)

        monkeypatch.setattr(processing.json, "dump", dump_then_die)
    elif crash_in == "summary":  # dies just before stats.json, the last file
        monkeypatch.setattr(processing, "summary_markdown", lambda *a: boom())
    else:  # the final rename fails (e.g. a full or read-only disk)
        def no_rename(src, dst):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(processing.os, "rename", no_rename)
    with pytest.raises(OSError if crash_in == "rename" else KeyboardInterrupt):
        write_cache(r, tmp_path / "tiny-abc")
    assert list(tmp_path.iterdir()) == []  # neither the final nor a temporary directory
    with pytest.raises(FileNotFoundError, match="no stats.json"):
        load_cache(tmp_path / "tiny-abc")


def test_directory_without_stats_is_refused(tmp_path):
    r = process(raw_dataset(SORT_ROWS, SORT_ITEMS), ProcessingOptions(k_core=1))
    final = write_cache(r, tmp_path / "tiny-abc")
    (final / "stats.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"'.*tiny-abc' is not a zoo processed cache \(no stats.json\)"):
        load_cache(final)


def test_missing_raw_file_names_the_key_the_resolved_path_and_the_fix(tmp_path, monkeypatch):
    """A recipe whose raw file is not on this machine (e.g. recipes/hm4sr_toys.yaml) fails before
    anything is written, naming the paths key, where a relative path was looked for, and what to set."""
    from datamodules.processing import prepare_dataset

    monkeypatch.chdir(tmp_path)
    (tmp_path / "reviews.json.gz").write_bytes(b"")
    with pytest.raises(FileNotFoundError) as e:
        prepare_dataset("amazon2014", {"reviews": "reviews.json.gz", "meta": "data/meta_Toys.json.gz"},
                        cache_dir=str(tmp_path / "cache"))
    msg = str(e.value)
    assert "paths.meta = 'data/meta_Toys.json.gz'" in msg and str(tmp_path / "data" / "meta_Toys.json.gz") in msg
    assert "data.init_args.paths.meta" in msg and "zoo data prepare --meta" in msg and "docs/data.md" in msg
    assert not (tmp_path / "cache").exists()
