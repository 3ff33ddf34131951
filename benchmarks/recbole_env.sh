#!/usr/bin/env bash
# RecBole's own virtualenv for the speed benchmark (benchmarks/speed_recbole.py), kept OUT of the
# zoo's .venv: RecBole 1.2.1 pins numpy<2 and its data path breaks on pandas>=2.3 / scipy>=1.14 /
# setuptools>=81 (pkg_resources).  torch is pinned to the zoo's version (a CPU build) and
# installed FIRST so nothing pulls a CUDA build.  Idempotent: an existing working venv is kept.
#
#   bash benchmarks/recbole_env.sh            # -> .venv-recbole (git-ignored as .venv*)
#   RECBOLE_VENV=/tmp/rb bash benchmarks/recbole_env.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${RECBOLE_VENV:-.venv-recbole}"
TORCH="${ZOO_TORCH:-torch==2.13.0}"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import recbole, torch" 2>/dev/null; then
  echo "[recbole_env] $VENV ready: $("$VENV/bin/python" -c 'import recbole, torch; print("recbole", recbole.__version__, "torch", torch.__version__)')"
  exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
# shellcheck disable=SC2086
"$VENV/bin/pip" install -q $TORCH
"$VENV/bin/pip" install -q "recbole==1.2.1" "setuptools<81" "numpy<2" "pandas<2.3" "scipy<1.14" \
  "$( "$VENV/bin/python" -c 'import torch; print("torch==" + torch.__version__.split("+")[0])' )"
"$VENV/bin/python" -c "import recbole, torch; print('[recbole_env] recbole', recbole.__version__, 'torch', torch.__version__)"
