"""The experiment runner works from a NON-editable install, away from any source checkout.

What this proves: a wheel built from the project (``pip wheel``, the same build ``pip install .``
runs) contains every package of the checkout, the recipes (shipped as package data ``zoo/recipes``
from the top-level ``recipes/`` folder) and the paper-number table; unpacked into an empty folder
that is the only project code on ``sys.path`` (PYTHONPATH replaced, working directory outside the
checkout), ``zoo reproduce --paper horae --dry-run`` plans HORAE's table from those installed files
and writes nothing.  The dependencies (torch, lightning, ...) come from the test interpreter's
environment, which is why the wheel is unpacked rather than installed into a fresh venv: nothing
is downloaded and the test takes seconds.  ``pip wheel`` neither installs nor uninstalls anything.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import sys
from pathlib import Path
site, checkout = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
assert not any(Path(p or ".").resolve() == checkout for p in sys.path), sys.path
from zoo.entry import main  # the console script's entry point
rc = main(["reproduce", "--paper", "horae", "--dry-run"])
assert main(["models"]) == 0 and main(["recipes"]) == 0  # read from the installed sources and recipes
mods = {n: m.__file__ for n, m in list(sys.modules.items())
        if n.split(".")[0] in ("zoo", "datamodules") and getattr(m, "__file__", None)}
outside = {n: f for n, f in mods.items() if site not in Path(f).resolve().parents}
assert not outside, f"imported from outside the install: {outside}"
sys.exit(rc)
"""


@pytest.mark.skipif(importlib.util.find_spec("pip") is None, reason="pip is not installed")
def test_reproduce_dry_run_from_a_non_editable_install(tmp_path):
    src = tmp_path / "src"  # build from a copy: the checkout gets no build/ or egg-info
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("zoo", "datamodules", "recipes"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    wheel, = (tmp_path / "dist").glob("zoo-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    recipes = sorted(p.name for p in (ROOT / "recipes").glob("*.yaml"))
    assert recipes and all(f"zoo/recipes/{r}" in names for r in recipes)
    assert "zoo/experiments/paper_numbers.yaml" in names
    packages = [p.parent.relative_to(ROOT).as_posix() for top in ("zoo", "datamodules")
                for p in (ROOT / top).rglob("__init__.py") if "__pycache__" not in p.parts]
    missing = [p for p in packages if f"{p}/__init__.py" not in names]
    assert not missing, f"sub-packages missing from the wheel (add them to pyproject.toml packages): {missing}"

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PYTHONPATH=str(site), PYTHONNOUSERSITE="1")
    r = subprocess.run([sys.executable, "-c", CHILD, str(site), str(ROOT)], cwd=work, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"recipes from {site / 'zoo' / 'recipes'}" in r.stdout
    if (Path.home() / ".cache" / "zoo" / "raw" / "ml-100k").is_dir():  # HORAE's embedded-default pre-training data
        assert "horae Table 7/default/HORAE seed 0  est ≤" in r.stdout and "/pretrain/horae_pretrain-" in r.stdout
    else:
        assert "missing raw data: expected " + str(Path.home() / ".cache" / "zoo" / "raw" / "ml-100k") in r.stdout
    assert "| HORAE |" in r.stdout  # the table with the paper's numbers beside the planned cells
    assert "HORAE: Temporal Multi-Interest Pre-training for Sequential Recommendation (Hu et al., ACM TOIS 2025)" \
        in r.stdout and f"recipes in {site / 'zoo' / 'recipes'}" in r.stdout  # zoo models / zoo recipes
    assert not list(work.iterdir())  # a dry run writes nothing


def test_the_set_up_stops_with_one_clear_line_when_the_disk_is_full(tmp_path):
    """scripts/need_space.sh, which both set-up scripts call before installing: too little free
    space (here: more than any disk has) is one line naming the folder, the need and what is free,
    and exit 1; enough is silent, exit 0.  Both scripts call it before creating a venv."""
    script = ROOT / "scripts" / "need_space.sh"
    short = subprocess.run(["bash", str(script), "999999999", "installing the zoo"], cwd=tmp_path,
                           capture_output=True, text=True)
    assert short.returncode == 1 and short.stdout == ""
    assert f"installing the zoo needs about 999999999 MB free in {tmp_path}" in short.stderr
    assert " MB. Free some space" in short.stderr and short.stderr.count("\n") == 1
    enough = subprocess.run(["bash", str(script), "1", "x"], cwd=tmp_path, capture_output=True, text=True)
    assert (enough.returncode, enough.stdout, enough.stderr) == (0, "", "")
    for name in ("setup.sh", "ci_images.sh"):
        text = (ROOT / "scripts" / name).read_text()
        assert text.index("need_space.sh") < text.index("-m venv"), name
