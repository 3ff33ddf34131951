#!/usr/bin/env bash
# Image features with timm (HM4SR's encoder) — run tests/test_image_features.py in its own venv.
#
# Why a separate environment: timm imports torchvision unconditionally (timm/layers/create_norm.py
# and timm/data), so `pip install --no-deps timm` into the main venv cannot work.  The only
# torchvision wheels these machines can install are CUDA builds: 0.28 for torch 2.13 fails to load
# its ops against the CPU torch 2.13.0+cpu (`operator torchvision::nms does not exist`, and then
# torchmetrics/lightning imports break too), and 0.29.x needs torch 2.14.  So the `images` extra
# lives next to the main environment, with torch 2.14.1 + torchvision 0.29.1 (it runs on CPU).
#
# Usage:  scripts/ci_images.sh [extra pytest args]
#   ZOO_IMAGES_VENV  where the venv goes (default: .venv-images in the repository root)
#   PYTHON           interpreter that creates it (default: python3)
# First run: about 2-3 minutes and ~6 GB (wheels come from this machine's disk); later runs
# reuse the venv and only check it (~15 s) before the tests (~10 s).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${ZOO_IMAGES_VENV:-.venv-images}"
PYTHON="${PYTHON:-python3}"

if ! "$VENV/bin/python" -c "import torchvision" 2>/dev/null; then
  bash scripts/need_space.sh 6500 "the image-feature venv $VENV (torch 2.14 + torchvision)"
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "ci_images: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
# Keep the venv out of git without touching the repository's .gitignore.
[ -f "$VENV/.gitignore" ] || echo '*' > "$VENV/.gitignore"

start=$(date +%s)
# torch first, pinned, so that the resolver never picks another (multi-GB) build.
"$VENV/bin/pip" install -q "torch==2.14.1" "torchvision==0.29.1"
"$VENV/bin/pip" install -q -e ".[images,test]"
echo "ci_images: environment ready in $(( $(date +%s) - start )) s"
"$VENV/bin/python" -c "import torch, torchvision, timm; print('ci_images: torch', torch.__version__, '| torchvision', torchvision.__version__, '| timm', timm.__version__)"

# ZOO_REQUIRE_TIMM=1 turns the timm tests' skip into a failure: in CI they must run.
ZOO_REQUIRE_TIMM=1 exec "$VENV/bin/python" -m pytest tests/test_image_features.py -q -rs "$@"
