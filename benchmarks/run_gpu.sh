#!/usr/bin/env bash
# All GPU benchmarks on the H200 rig, in order, sharing one jitcache root (EP_JIT_CACHE_DIR=<root>/deep_ep).
# Run from the repository root after `source /tmp/gpu-rig/env.sh`:
#   bash benchmarks/run_gpu.sh "$OUT"            (~6-7 min; each script writes its JSON even if a later one fails)
# 1. readiness.py: cold live warmup of h200-ep1 into the shared root (~3 min: all 14 buckets), AOT warmup with
#    16 nvcc jobs into a second empty root + a live pass on it, then a new worker on the populated shared root;
# 2. decode_moe_step.py: every variant it needs is now cached (buckets 1..1024 and 8192 = capacity/None);
# 3. runtime_overhead.py --part gpu: dispatcher vs direct DeepEP, share of the step from 2's JSON.
# Optional: COLD_LIVE_JSON=<readiness.json or live_proof.json of this session> to reuse its cold number
# (used only if CACHE_ROOT already covers the plan).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-${OUT:-benchmarks/results/h200}}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
CACHE_ROOT="${CACHE_ROOT:-$(mktemp -d /tmp/jitcache-bench-XXXXXX)}"
export JITCACHE_STATS=0 PYTHONUNBUFFERED=1
echo "run_gpu: out=$OUT cache root=$CACHE_ROOT ($(date +%T))"
status=0
EXTRA=()
[ -n "${COLD_LIVE_JSON:-}" ] && EXTRA=(--cold-live-json "$COLD_LIVE_JSON")
timeout 330 "$PY" benchmarks/readiness.py --cache-dir "$CACHE_ROOT" --out "$OUT" --jobs 16 "${EXTRA[@]}" \
  2>&1 | tee "$OUT/readiness.log" || status=1
echo "run_gpu: readiness done ($(date +%T))"
timeout 300 "$PY" benchmarks/decode_moe_step.py --cache-dir "$CACHE_ROOT" --out "$OUT" \
  2>&1 | tee "$OUT/decode_moe_step.log" || status=1
echo "run_gpu: decode_moe_step done ($(date +%T))"
timeout 120 "$PY" benchmarks/runtime_overhead.py --part gpu --cache-dir "$CACHE_ROOT" \
  --step-json "$OUT/decode_moe_step.json" --out "$OUT" 2>&1 | tee "$OUT/runtime_overhead_gpu.log" || status=1
echo "run_gpu: runtime_overhead done ($(date +%T)); status=$status"
exit $status
