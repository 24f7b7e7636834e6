#!/usr/bin/env bash
# All CPU benchmarks, one command: results under benchmarks/results/<machine>/ (or DIR), the plots of the
# committed H200 JSON, then the README table.
#   bash benchmarks/run_cpu.sh [DIR]            (~15 s on 2 cores)
#   FULL=1 bash benchmarks/run_cpu.sh           (+ the whole-profile AOT benchmarks: ~4 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
OUT_ARGS=()
[ $# -ge 1 ] && OUT_ARGS=(--out "$1")
status=0
"$PY" benchmarks/bucket_lookup.py || status=1
"$PY" benchmarks/storm.py "${OUT_ARGS[@]}" || status=1
"$PY" benchmarks/runtime_overhead.py --part cpu "${OUT_ARGS[@]}" || status=1
"$PY" benchmarks/digest_truth.py "${OUT_ARGS[@]}" || status=1
if [ -n "${FULL:-}" ]; then
  "$PY" benchmarks/aot_warmup.py ${1:+--out "$1/aot_warmup.json"} || status=1
  "$PY" benchmarks/aot_concurrent.py "${OUT_ARGS[@]}" || status=1
  "$PY" benchmarks/triton_aot.py || status=1
fi
"$PY" benchmarks/plot_h200.py || status=1
[ $# -ge 1 ] || "$PY" benchmarks/report.py || status=1
exit $status
