"""Run ReChorus's own ``main.py`` (unmodified, from a checkout) and write each test user's rank.

Runs INSIDE ReChorus's virtualenv (see benchmarks/peers/README.md), started by
``benchmarks/peers/run.py``; by hand::

    .venv-rechorus/bin/python benchmarks/peers/rechorus_driver.py --src /tmp/rechorus/src \\
        --out runs/peers/ReChorus-SASRec-s0 -- --model_name SASRec --path runs/peers/data/rechorus/ \\
        --dataset ml_latest_small --random_seed 0 --epoch 5 ...

1. CPU shim (the only one; ReChorus's source stays as it is): ``np.object``, ``np.int``,
   ``np.float`` and ``np.bool``, removed in numpy 1.24 but used by ReChorus
   (models/BaseModel.py, models/sequential/SASRec.py, utils/utils.py), are restored as the
   builtins they aliased before ``main.py`` is imported.
2. ``main.py`` runs as ``__main__`` (``runpy``) with the arguments after ``--`` and the working
   directory ``--cwd`` (default ``<out>/cwd``: its relative ``../model`` paths land in ``<out>``).
   ReChorus trains for ``--epoch`` epochs (``--early_stop 0``: none), keeps the best-dev weights
   (``--main_metric``) and reloads them before its final test.
3. The driver then rebuilds the model from ReChorus's saved corpus and arguments, loads the
   best-dev weights ReChorus saved, and calls ReChorus's ``runner.predict`` on its test set with
   ``--test_all 1``: every item is a candidate and the user's train/dev/test items other than the
   target are set to -inf (ReChorus's masking = the zoo's ``mask_history: true`` on data without
   repeats).  Rank = #{candidates scoring >= the target} - 1, ReChorus's own ``gt_rank - 1``
   (pessimistic ties, as the zoo).

Output ``--out``: ``peer_ranks.npz`` (``user`` = zoo user index, ``target``, ``rank``) and
``peer_result.json`` (argv, ReChorus's metrics from the ranks, timings).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import runpy
import sys
import tempfile
import time
from pathlib import Path


def numpy_aliases() -> list[str]:
    """Restore numpy's removed builtin aliases; return the names restored."""
    import numpy as np

    done = []
    for name, value in (("object", object), ("int", int), ("float", float), ("bool", bool)):
        if name not in np.__dict__:
            setattr(np, name, value)
            done.append(f"np.{name}")
    return done


def main() -> None:
    argv = sys.argv[1:]
    if "--" not in argv:
        raise SystemExit("usage: rechorus_driver.py --src SRC --out OUT -- <ReChorus main.py arguments>")
    cut = argv.index("--")
    p = argparse.ArgumentParser()
    p.add_argument("--src", required=True, help="ReChorus checkout's src/ folder (holds main.py)")
    p.add_argument("--out", required=True)
    p.add_argument("--cwd", default=None, help="working directory of main.py (default <out>/cwd); TiMiRec's "
                   "stage 2 is given stage 1's, where ReChorus left the extractor (../model/TiMiRec/)")
    a = p.parse_args(argv[:cut])
    rc_argv = argv[cut + 1 :]
    src = Path(a.src).resolve()
    out = Path(a.out).resolve()
    cwd = Path(a.cwd).resolve() if a.cwd else out / "cwd"
    cwd.mkdir(parents=True, exist_ok=True)
    restored = numpy_aliases()
    t0 = time.perf_counter()
    os.chdir(cwd)
    sys.path.insert(0, str(src))
    sys.argv = [str(src / "main.py")] + rc_argv
    g = runpy.run_path(str(src / "main.py"), run_name="__main__")
    fit_s = time.perf_counter() - t0

    import numpy as np

    args, model_name, runner_name = g["args"], g["model_name"], g["runner_name"]
    corpus_path = os.path.join(args.path, args.dataset, model_name.reader + args.data_appendix + ".pkl")
    with open(corpus_path, "rb") as f:
        corpus = pickle.load(f)  # ReChorus's own cache, written by its main.py in this run's data folder
    model = model_name(args, corpus).to(args.device)
    model.load_model()  # the best-dev weights ReChorus saved (TiMiRec pretrain: its extractor file)
    ds = model_name.Dataset(model, corpus, "test")
    ds.prepare()
    runner = runner_name(args)
    pred = runner.predict(ds)  # [U, 1 + n_items]: column 0 = the target, history set to -inf
    rank = (pred >= pred[:, :1]).sum(1).astype(np.int64) - 1
    user = np.asarray(ds.data["user_id"], dtype=np.int64) - 1  # ReChorus ids = zoo indices + 1
    target = np.asarray(ds.data["item_id"], dtype=np.int64)
    fd, tmp = tempfile.mkstemp(prefix=".peer_ranks.npz.", suffix=".tmp", dir=out)
    with os.fdopen(fd, "wb") as f:
        np.savez_compressed(f, user=user, target=target, rank=rank)
    os.replace(tmp, out / "peer_ranks.npz")
    res = {"framework": "ReChorus", "argv": rc_argv, "numpy_aliases_restored": restored,
           "n_candidates": int(pred.shape[1] - 1), "n_test_users": len(user),
           "hr@10": float((rank < 10).mean()), "ndcg@10": float(np.where(rank < 10, 1 / np.log2(rank + 2), 0).mean()),
           "fit_s": fit_s, "total_s": time.perf_counter() - t0}
    fd, tmp = tempfile.mkstemp(prefix=".peer_result.json.", suffix=".tmp", dir=out)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1)
    os.replace(tmp, out / "peer_result.json")


if __name__ == "__main__":
    main()
