#!/usr/bin/env bash
# The multi-GPU proof (issue 7) on an H200 x2 (EP2) or x4 (EP4) device machine. NOT RUN YET.
#
# Device calls, all with the same kind (kind=nvidia-h200-x2, or -x4 with N=4; another kind gives the machine
# back and starts a bare one). Prepare .gpu/ on this machine first: `bash ../shared/gpu/prepare.sh`.
#   call 1  carry [".gpu/n1"]               mkdir -p /tmp/gpu-rig/n && cp .gpu/n1/part* /tmp/gpu-rig/n/
#   call 2  carry [".gpu/n2"]               mkdir -p /tmp/gpu-rig/n && cp .gpu/n2/part* /tmp/gpu-rig/n/
#   call 3  carry [".gpu/n3"]               mkdir -p /tmp/gpu-rig/n && cp .gpu/n3/part* /tmp/gpu-rig/n/
#   call 4  carry [".gpu/n4"]               mkdir -p /tmp/gpu-rig/n && cp .gpu/n4/part* /tmp/gpu-rig/n/
#   call 5  carry [".gpu/n5", ".gpu/deps"]  mkdir -p /tmp/gpu-rig/n && cp .gpu/n5/part* /tmp/gpu-rig/n/ \
#                                            && bash .gpu/deps/device-setup.sh          (~2-3 min: builds DeepEP)
#   call 6  bash benchmarks/run_gpu_multi.sh live 2 h200x2-ep2            (~4-5 min, budget 300 s)
#   call 7  bash benchmarks/run_gpu_multi.sh lazy 2 h200x2-ep2            (~4-5 min, budget 300 s)
#   call 8  bash benchmarks/run_gpu_multi.sh aot,trace 2 h200x2-ep2       (~3-4 min: AOT ~0.5 min, trace ~1-3 min)
#   optional: bash benchmarks/run_gpu_multi.sh pytest 2                    (tests/test_gpu_multi.py, ~3 min)
# Calls 6-8 keep their caches in /tmp/jitcache-multi/<profile>/work and their parts in .../out on the device
# (kept while the machine stays warm), and copy out/ to $OUT each time; the trace uses live's cache when call 6
# ran on this machine, else the AOT cache of call 8. Then, here:
#   mkdir -p benchmarks/results/h200x2 && cp -r <files_at>/multi/. benchmarks/results/h200x2/
#   python benchmarks/gpu_multi_proof.py --merge-only --out benchmarks/results/h200x2   (merges the parts of all calls)
#
# Usage (device, repository root): bash benchmarks/run_gpu_multi.sh PHASES [NPROC] [PROFILE]
#   PHASES: comma-separated subset of live,lazy,aot,trace (or "pytest"); NPROC default 2; PROFILE default h200x<N>-ep<N>
set -uo pipefail
cd "$(dirname "$0")/.."
PHASES="${1:?phases: live, lazy, aot, trace (comma-separated) or pytest}"
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
