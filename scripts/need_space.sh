#!/usr/bin/env bash
# usage: bash scripts/need_space.sh MB WHAT
# Exit 1, saying where and how much, when the file system of the current directory or of the
# temporary directory (where pip unpacks wheels) has less than MB megabytes free; called by the
# set-up scripts before they install, so that a full disk fails with one clear line instead of a
# half-installed virtualenv and pip's "[Errno 28] No space left on device".
set -euo pipefail
need_mb=$1
what=$2
for dir in "$PWD" "${TMPDIR:-/tmp}"; do
  free_kb=$(df -Pk "$dir" 2>/dev/null | awk 'NR == 2 {print $4}')
  [ -n "$free_kb" ] || continue  # df cannot tell: let the install try
  if [ "$free_kb" -lt $((need_mb * 1024)) ]; then
    echo "[setup] error: $what needs about $need_mb MB free in $dir; it has $((free_kb / 1024)) MB. Free some space (old clones, .venv-images, ~/.cache/pip) or point TMPDIR elsewhere, then run it again." >&2
    exit 1
  fi
done
