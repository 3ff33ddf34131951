#!/usr/bin/env bash
# The README's test command: set up (idempotent), run the whole suite, then the timm image tests in
# their own venv (timm needs torchvision, which needs another torch than the main venv's), so CI
# exercises that path instead of skipping it.  Exits non-zero on any failure or on an empty run.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || { echo "setup failed"; exit 1; }
.venv/bin/python -m pytest -q "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no test: failing on purpose"
  exit 1
fi
[ "$rc" -eq 0 ] || exit "$rc"
[ "$#" -eq 0 ] || exit 0   # a selection of tests was asked for: skip the image venv
bash scripts/ci_images.sh
