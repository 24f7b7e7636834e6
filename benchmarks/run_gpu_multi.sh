#!/usr/bin/env bash
# The multi-GPU proof (issue 7) on an H200 x2 (EP2) or x4 (EP4) device machine. Run on an H200 x2: results
# in benchmarks/results/h200x2/ (EP4 not run yet).
#
# Device calls, all with the same kind (kind=nvidia-h200-x2, or -x4 with N=4; another kind gives the machine
# back and starts a bare one). Prepare .gpu/ on this machine first: `bash ../shared/gpu/prepare.sh`.
#   call 1-4  carry [".gpu/nK"]               mkdir -p /tmp/gpu-rig/n && cp .gpu/nK/* /tmp/gpu-rig/n/
#   call 5    carry [".gpu/n5", ".gpu/deps"]  cp .gpu/n5/* /tmp/gpu-rig/n/ && bash .gpu/deps/device-setup.sh
#                                              (about 2 min: builds DeepEP), then the first phases, e.g.
#             bash benchmarks/run_gpu_multi.sh aot,trace 2 h200x2-ep2         (~1 min)
# Phases that outlast one call (live_plain, lazy: ~3.5 min each) run in the background from a copy of the
# tree (every call re-syncs the working tree, which removes the symlinks below), polled by calls < 30 s apart:
#   rm -rf /tmp/jc && mkdir /tmp/jc && cp -r benchmarks jitcache cli cache_profiles tests pyproject.toml /tmp/jc/ \
#     && cd /tmp/jc && (OUT=/tmp/jc-out setsid nohup bash benchmarks/run_gpu_multi.sh lazy 2 > /tmp/p.log 2>&1 &)
#   then: sleep 25; tail -1 /tmp/p.log    (repeat); at the end: tar czf $OUT/out.tgz -C /tmp/jitcache-multi/<profile> out
# Phases keep their caches in /tmp/jitcache-multi/<profile>/work and their parts in .../out (kept while the
# machine stays warm); the trace uses live's cache when live ran on this machine, else the AOT cache. Here:
#   mkdir -p benchmarks/results/h200x2 && cp -r <files_at>/multi/. benchmarks/results/h200x2/
#   python benchmarks/gpu_multi_proof.py --merge-only --out benchmarks/results/h200x2   (merges every call's parts)
#
# Usage (device, repository root): bash benchmarks/run_gpu_multi.sh PHASES [NPROC] [PROFILE]
#   PHASES: comma-separated subset of live,live_plain,lazy,aot,trace (or "pytest"); NPROC default 2; PROFILE default h200x<N>-ep<N>
set -uo pipefail
cd "$(dirname "$0")/.."
PHASES="${1:?phases: live, live_plain, lazy, aot, trace (comma-separated) or pytest}"
N="${2:-2}"
PROFILE="${3:-h200x${N}-ep${N}}"
OUT_DIR="${OUT:-/tmp/jitcache-multi-out}"
BASE="/tmp/jitcache-multi/$PROFILE"

# The package-dir mapping of pyproject (jitcache.cli = cli/, jitcache.cache_profiles = cache_profiles/).
ln -sfn ../cli jitcache/cli && ln -sfn ../cache_profiles jitcache/cache_profiles
# shellcheck disable=SC1091
source /tmp/gpu-rig/env.sh || { echo "run_gpu_multi: no /tmp/gpu-rig/env.sh: make calls 1-5 first" >&2; exit 2; }
# NVLink multicast stays off on these machines (KINDS.md); EP_DISABLE_GIN=1 comes from env.sh (no RDMA NIC).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" JITCACHE_STATS=0 PYTHONUNBUFFERED=1
mkdir -p "$OUT_DIR/multi" "$BASE/out"
nvidia-smi --query-gpu=index,name,memory.used --format=csv > "$OUT_DIR/multi/nvidia-smi.$(date +%H%M%S).csv" 2>&1
nvidia-smi nvlink -s > "$OUT_DIR/multi/nvlink.txt" 2>&1 || true   # what DeepEP's num_sms model reads

if [ "$PHASES" = pytest ]; then
  timeout 540 python3 -m pytest -m gpu -q tests/test_gpu_multi.py 2>&1 | tee "$OUT_DIR/multi/gpu_multi_pytest.log"
  exit "${PIPESTATUS[0]}"
fi

echo "run_gpu_multi: $PHASES on $N ranks, profile $PROFILE ($(date +%T))"
timeout 570 python3 -m torch.distributed.run --nproc-per-node "$N" --master-port 29511 benchmarks/gpu_multi_proof.py \
  --profile "$PROFILE" --phases "$PHASES" --out "$BASE/out" --work "$BASE/work" \
  2>&1 | tee -a "$BASE/out/multi_proof.log"
status=${PIPESTATUS[0]}
cp -r "$BASE/out/." "$OUT_DIR/multi/"
echo "run_gpu_multi: done, status $status ($(date +%T)); copied to $OUT_DIR/multi"
exit "$status"
