"""The README's promises: at most 12,000 characters, and every command of its "first hour" block
runs through the real console script, as a new user would type it, in a fresh folder.

CI-sized: a `zoo fit` gets `--trainer.max_epochs 1` and a few batches (the same recipe, data and
model otherwise); `zoo tune` passes the same limits to its trials after `--`. A command marked
`# long` in the README is checked through its plan (`--dry-run`) instead of being run.  The Amazon
files of the "bring your own data" line are small files in the publisher's format, written here.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
ZOO = str(Path(sys.executable).parent / "zoo")
CI_FIT = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "2"]


def first_hour() -> list[tuple[str, bool]]:
    """(command, long?) for each line of the README's first-hour block."""
    text = README.read_text(encoding="utf-8")
    m = re.search(r"<!-- first-hour:begin -->\n```bash\n(.*?)```\n<!-- first-hour:end -->", text, re.S)
    assert m, "README.md lost its first-hour block (<!-- first-hour:begin --> ... <!-- first-hour:end -->)"
    out = []
    for line in m.group(1).splitlines():
        cmd, _, comment = line.partition("#")
        if cmd.strip():
            out.append((cmd.strip(), comment.strip().startswith("long")))
    return out


def test_readme_is_short_and_leads_with_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text) <= 12_000, f"README.md has {len(text)} characters (at most 12,000)"
    assert "bash scripts/setup.sh &&" in text and "bash scripts/test.sh" in text
    assert text.index("bash scripts/setup.sh") < text.index("first-hour:begin")
    for link in re.findall(r"\]\((docs/[\w.-]+\.md)\)", text):
        assert (ROOT / link).is_file(), f"README links to a missing page {link}"


def write_amazon2018(folder: Path, n_users: int = 30, n_items: int = 25) -> None:
    """A tiny Office_Products.csv (item,user,rating,timestamp, no header) and its gzipped meta."""
    rows = []
    for u in range(n_users):
        for j in range(10):
            rows.append(f"B{(u * 3 + j * 7) % n_items:04d},U{u:03d},5.0,{1388534400 + 86400 * (u + j)}")
    (folder / "Office_Products.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    with gzip.open(folder / "meta_Office_Products.json.gz", "wt", encoding="utf-8") as fh:
        for i in range(n_items):
            fh.write(json.dumps({"asin": f"B{i:04d}", "title": f"Pen model {i}", "category": ["Office Products"]}) + "\n")


def ci_sized(cmd: str, long: bool) -> list[str]:
    args = shlex.split(cmd)
    assert args[0] == "zoo", f"a first-hour line must start with `zoo`: {cmd!r}"
    args = [ZOO, *args[1:]]
    if long:
        assert args[1] in ("reproduce", "ablate"), f"only reproduce/ablate may be marked long: {cmd!r}"
        return [*args, "--dry-run"]
    if args[1] == "fit":
        return [*args, *CI_FIT]
    if args[1] == "tune":
        return [*args, "--", *CI_FIT]
    return args


@pytest.mark.slow
def test_every_first_hour_command_runs(tmp_path: Path) -> None:
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    write_amazon2018(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    for key in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        env[key] = str(tmp_path / "wandb")
    commands = first_hour()
    assert len(commands) >= 10
    for cmd, long in commands:
        r = subprocess.run(ci_sized(cmd, long), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"`{cmd}` failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    runs = tmp_path / "runs"
    assert (runs / "sasrec" / "test_metrics.json").is_file() and (runs / "sasrec" / "ranks.npz").is_file()
    assert list((runs / "sasrec").glob("test-*.json")) and list((runs / "sasrec").glob("predictions-*.csv"))
    assert list((home / ".cache" / "zoo").glob("*/stats.json")), "zoo data prepare wrote no cache"
