#!/usr/bin/env bash
# All CPU benchmarks, one command: results under benchmarks/results/<machine>/ (or DIR), then the README table.
#   bash benchmarks/run_cpu.sh [DIR]        (~15 s on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
OUT_ARGS=()
[ $# -ge 1 ] && OUT_ARGS=(--out "$1")
status=0
"$PY" benchmarks/storm.py "${OUT_ARGS[@]}" || status=1
"$PY" benchmarks/runtime_overhead.py --part cpu "${OUT_ARGS[@]}" || status=1
[ $# -ge 1 ] || "$PY" benchmarks/report.py || status=1
exit $status
