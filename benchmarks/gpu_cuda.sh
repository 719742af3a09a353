#!/usr/bin/env bash
# The one script for the GPU machine: build the extension, run the CUDA tests, run compute-sanitizer
# once (memcheck + racecheck on a small case of every kernel), time the kernels, print a short table
# last. Run from the repository root:  OUT=/some/dir bash benchmarks/gpu_cuda.sh
# Env: OUT (logs, default /tmp/sparsekit_gpu), TORCH_CUDA_ARCH_LIST (default 9.0: quicker builds),
# NCU=1 (also profile one teal and one spdp launch with Nsight Compute), SKIP_TESTS=1, QUICK=1,
# TEAL=1 (time only teal at T=1, its variants and one spdp/spinfer sanity point: cuda_kernels.py --teal),
# BUDGET (seconds for the whole script, default 525).
set -uo pipefail
OUT=${OUT:-/tmp/sparsekit_gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
PY=${PY:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # run from the repository root
DEADLINE=$(($(date +%s) + ${BUDGET:-525}))  # whole-script budget (seconds): steps share it

step() {  # step NAME LIMIT_S CMD...: run with a time limit, log to $OUT/NAME.log, show its tail
  local name=$1 limit=$2 t0 rc left
  shift 2
  left=$((DEADLINE - $(date +%s) - 3))
  [ "$left" -lt "$limit" ] && limit=$left
  [ "$limit" -lt 10 ] && { echo "== $name: skipped, out of time"; return 124; }
  echo "== $name"
  t0=$(date +%s)
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  echo "   rc=$rc in $(($(date +%s) - t0)) s"
  tail -n "${TAIL:-15}" "$OUT/$name.log" | cut -c1-300
  return $rc
}

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv,noheader
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
nvcc --version | tail -n 2 | head -n 1

step build 300 $PY setup.py build_ext --inplace || { grep -n -m 20 -i "error" "$OUT/build.log"; exit 1; }
grep -E "spill|stack frame" "$OUT/build.log" | grep -v " 0 bytes" | head -5

if [ "${SKIP_TESTS:-0}" != 1 ]; then
  TAIL=25 step tests 170 $PY -m pytest -q -p no:cacheprovider --maxfail=30 -rf tests/kernels/test_cuda_kernels.py
  step memcheck 70 compute-sanitizer --tool memcheck --error-exitcode 9 \
    $PY -m pytest -q -p no:cacheprovider -k sanitizer_smoke tests/kernels/test_cuda_kernels.py
  step racecheck 60 compute-sanitizer --tool racecheck --error-exitcode 9 \
    $PY -m pytest -q -p no:cacheprovider -k "sanitizer_smoke and 1" tests/kernels/test_cuda_kernels.py
fi

if [ "${NCU:-0}" = 1 ]; then
  step ncu 200 ncu --clock-control none --target-processes all -k regex:matvec_kernel -c 6 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats \
    --section WarpStateStats --section SchedulerStats --section InstructionStats \
    $PY benchmarks/cuda_kernels.py --ncu
fi

BENCH_FLAGS=""
[ "${QUICK:-0}" = 1 ] && BENCH_FLAGS="$BENCH_FLAGS --quick"
[ "${TEAL:-0}" = 1 ] && BENCH_FLAGS="$BENCH_FLAGS --teal"
TAIL=0 step bench 300 $PY benchmarks/cuda_kernels.py $BENCH_FLAGS --json "$OUT/cuda_kernels.json"
# the short table (stdout of the timing script) comes last
sed -n '/^## /,$p' "$OUT/bench.log"
