"""``zoo data prepare`` / ``zoo data stats`` on raw files the tests write (GroupLens and Amazon 2018).

Most calls run ``zoo.data_cli.data_main`` in-process (fast); one runs the installed ``zoo``
console script in a subprocess, as a user would.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from zoo.data_cli import data_main

from test_datamodule import write_hand  # the hand-written GroupLens fixture and its counts

# Amazon 2018 ratings-only CSV (item,user,rating,timestamp; no header).  2-core by hand:
# round 1: items B01 2, B02 2, B03 2 keep; user A3 (1 rating) goes  -> -0, -1
# round 2: B03 has 1 rating left (A2's) and goes; A2 keeps B01 B02   -> -1, -0
# result: users A1, A2 x items B01, B02 = 2 users, 2 items, 4 interactions
AMAZON_RATINGS = """B01,A1,5.0,1500000000
B02,A1,4.0,1500086400
B01,A2,3.0,1500000000
B02,A2,2.0,1500172800
B03,A2,1.0,1500259200
B03,A3,5.0,1500000000
"""


def cache_path(out: str) -> Path:
    m = re.search(r"- cache: `([^`]+)`", out)
    assert m, f"no cache path in the summary:\n{out}"
    return Path(m.group(1))


def test_prepare_and_stats_movielens_hand(tmp_path, capsys):
    folder = write_hand(tmp_path / "ml-hand")
    rc = data_main(["prepare", "--format", "movielens", "--path", str(folder), "--k", "2", "--out", str(tmp_path / "c")])
    out = capsys.readouterr().out
    assert rc == 0
    # 2-core on the hand fixture: movies 16 and 17 are rated once; every user keeps >= 2 ratings
    for line in ("- users: 3", "- items: 5", "- interactions: 10", "## Filters",
                 "- k-core round 1: -2 interactions (items < 2), -0 (users < 2)",
                 "- raw: 12 interactions, 3 users, 7 items", "- protocol: leave_one_out",
                 "- categories: 3", "sequence length: avg 3.33, min 2, max 5"):
        assert line in out, line
    cache = cache_path(out)
    assert cache.parent == tmp_path / "c" and (cache / "stats.json").is_file()

    assert data_main(["stats", str(cache)]) == 0
    assert capsys.readouterr().out == out  # the same summary again

    assert data_main(["stats", str(cache), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["num_users"], stats["num_items"], stats["num_interactions"]) == (3, 5, 10)
    assert stats["options"]["k_core"] == 2 and stats["cache_path"] == str(cache)


def test_prepare_movielens_5_core_matches_a_reference(ml_folder, tmp_path, capsys):
    assert data_main(["prepare", "--format", "movielens", "--path", str(ml_folder), "--k", "5",
                      "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    # reference: a plain loop of 5-core rounds over the raw ratings.csv
    r = pd.read_csv(ml_folder / "ratings.csv")
    while True:
        n = len(r)
        r = r[r.groupby("movieId")["movieId"].transform("size") >= 5]
        r = r[r.groupby("userId")["userId"].transform("size") >= 5]
        if len(r) == n:
            break
    assert f"- users: {r['userId'].nunique():,}" in out
    assert f"- items: {r['movieId'].nunique():,}" in out
    assert f"- interactions: {len(r):,}" in out
    # the same options again: the cache is reused, same path
    assert data_main(["prepare", "--format", "movielens", "--path", str(ml_folder), "--k", "5",
                      "--out", str(tmp_path)]) == 0
    assert cache_path(capsys.readouterr().out) == cache_path(out)
    assert len([p for p in tmp_path.iterdir()]) == 1


def test_prepare_amazon2018_ratings_csv(tmp_path, capsys):
    csv = tmp_path / "Office_Products.csv"
    csv.write_text(AMAZON_RATINGS)
    rc = data_main(["prepare", "--format", "amazon2018", "--ratings", str(csv), "--k", "2",
                    "--protocol", "user_split", "--out", str(tmp_path / "c")])
    out = capsys.readouterr().out
    assert rc == 0
    for line in ("# Office_Products", "- users: 2", "- items: 2", "- interactions: 4",
                 "- k-core round 1: -0 interactions (items < 2), -1 (users < 2)",
                 "- k-core round 2: -1 interactions (items < 2), -0 (users < 2)",
                 "- protocol: user_split", "- time span: 2017-07-14 .. 2017-07-16"):
        assert line in out, line
    stats = json.loads((cache_path(out) / "stats.json").read_text())
    assert stats["num_interactions"] == 4 and stats["time_unit"] == 86400


def test_errors_exit_non_zero_with_a_message(tmp_path, capsys):
    missing = tmp_path / "no-such-folder"
    assert data_main(["prepare", "--format", "movielens", "--path", str(missing), "--out", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("zoo data: error:") and str(missing) in err
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())

    folder = write_hand(tmp_path / "ml-hand")
    assert data_main(["prepare", "--format", "movielens", "--path", str(folder), "--k", "9", "--out", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err
    assert "9-core filtering (users >= 9, items >= 9) removed all 12 interactions" in err
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())  # nothing half-written

    assert data_main(["stats", str(folder)]) == 1
    assert f"'{folder}' is not a zoo processed cache (no stats.json)" in capsys.readouterr().err

    assert data_main(["prepare", "--format", "movielens", "--path", str(folder), "--option", "oops"]) == 1
    assert "--option expects KEY=VALUE, got 'oops'" in capsys.readouterr().err

    with pytest.raises(SystemExit) as e:  # argparse: an unknown format is a usage error
        data_main(["prepare", "--format", "netflix", "--path", str(folder)])
    assert e.value.code == 2 and "invalid choice: 'netflix'" in capsys.readouterr().err


def test_zoo_console_script(tmp_path):
    """The installed ``zoo`` entry point dispatches ``zoo data`` (one real subprocess)."""
    folder = write_hand(tmp_path / "ml-hand")
    zoo = Path(sys.executable).parent / "zoo"
    assert zoo.is_file(), f"console script not installed next to {sys.executable}"
    p = subprocess.run([str(zoo), "data", "prepare", "--format", "movielens", "--path", str(folder),
                        "--k", "2", "--out", str(tmp_path / "c")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "- users: 3" in p.stdout and "- interactions: 10" in p.stdout
    assert (cache_path(p.stdout) / "summary.md").read_text(encoding="utf-8") in p.stdout


def test_data_prepare_does_not_import_torch(tmp_path: Path) -> None:
    """Preparing a cache needs pandas and numpy only: importing torch and Lightning cost seconds."""
    folder = tmp_path / "ml"
    write_hand(folder)
    code = ("import sys; from zoo.data_cli import data_main; "
            f"rc = data_main(['prepare', '--format', 'movielens', '--path', {str(folder)!r}, '--k', '2', "
            f"'--out', {str(tmp_path / 'c')!r}]); "
            "print('RC', rc, 'TORCH', 'torch' in sys.modules, 'LIGHTNING', 'lightning' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       cwd=Path(__file__).resolve().parents[1])
    assert "RC 0 TORCH False LIGHTNING False" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
