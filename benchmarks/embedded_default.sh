#!/usr/bin/env bash
# Every model of the zoo on the embedded default (real MovieLens latest-small; pre-training on the
# real MovieLens-100K), one `zoo fit` per row, sequentially; each run early-stops as its recipe says
# or stops at the time cap ZOO_MAX_TIME (default 3 minutes of fit, a common CPU budget), then
# benchmarks/collect_default.py writes benchmarks/results/embedded_default.md.
#   bash benchmarks/embedded_default.sh            # all rows (about 1.5 h on 2 CPU cores)
#   bash benchmarks/embedded_default.sh sasrec     # selected rows
set -uo pipefail
cd "$(dirname "$0")/.."
CAP=${ZOO_MAX_TIME:-00:00:03:00}
ZOO=${ZOO:-.venv/bin/zoo}
OUT=${ZOO_RUNS:-runs/default}
fit() {  # fit NAME RECIPE [overrides...]
  local name=$1 recipe=$2; shift 2
  if [ -f "$OUT/$name/test_metrics.json" ]; then echo "[skip] $name (done)"; return; fi
  echo "[run] $name: zoo fit --config recipes/$recipe.yaml $* --trainer.max_time $CAP"
  $ZOO fit --config "recipes/$recipe.yaml" --run_dir "$OUT/$name" --trainer.max_time "$CAP" "$@" > "$OUT/$name.log" 2>&1 \
    || echo "[fail] $name (see $OUT/$name.log)"
}
mkdir -p "$OUT"
ROWS=${*:-"pop sasrec gru4rec horae miracle hm4sr timirec hpcl4sr mind comirec_dr timirec_plus comirec_dr_loo"}
for row in $ROWS; do
  case $row in
    pop|sasrec|gru4rec|hm4sr|hpcl4sr|mind|comirec_dr) fit "$row" "$row" ;;
    comirec_dr_loo) fit comirec_dr_loo comirec_dr --data.init_args.protocol leave_one_out --data.init_args.min_seq_len 0 \
                      --data.init_args.k_core 5 --model.init_args.topk '[10, 20, 50]' --monitor val/ndcg@10 ;;
    horae|miracle|timirec|timirec_plus)
      fit "${row}_pretrain" "${row}_pretrain"
      fit "$row" "$row" --model.init_args.pretrained_ckpt "$OUT/${row}_pretrain/best.ckpt"
      [ "${row#timirec}" = "$row" ] && fit "${row}_no_pretrain" "$row" --model.init_args.pretrained_ckpt null --model.init_args.freeze '[]'
      ;;
    *) echo "unknown row $row" ;;
  esac
done
.venv/bin/python benchmarks/collect_default.py "$OUT" > /dev/null && echo "[done] benchmarks/results/embedded_default.md"
