#!/usr/bin/env bash
# What a user with GPUs runs once: every model x {1, 2 GPUs (DDP)} x {fp32, bf16-mixed} x {eager, torch.compile},
# a few hundred steps and one test evaluation each, on the embedded default (set up by scripts/setup.sh).
# Writes benchmarks/results/gpu_check.md (steps/s, eval time, final loss, metric, peak GPU memory, OK/error);
# one failing cell does not stop the table. Options: see `bash benchmarks/gpu_check.sh --help`.
#   bash benchmarks/gpu_check.sh                        # all models, every setting the visible GPUs allow
#   bash benchmarks/gpu_check.sh --models sasrec horae  # selected rows
#   bash benchmarks/gpu_check.sh --cpu-smoke --steps 2  # no GPU: exercise the code path on CPU
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python )}
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv
exec "$PY" -m benchmarks.gpu_check "$@"
