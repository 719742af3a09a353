#!/usr/bin/env bash
# One batched GPU session (run on the GPU machine from the repository root):
# build the extension, run every cuda-marked test outside the kernel suite, time the kernels
# (kernel-test --bench), time pruning and calibration on a Llama-2-7B-shaped model, and profile
# decode (dense vs teal 50%). Logs and JSON go to $OUT; a short summary is printed last.
#   OUT=dir bash benchmarks/gpu_all.sh          (decode speed: python3 benchmarks/decode.py)
set -uo pipefail
DEST=${OUT:-runs/gpu_all}        # what comes back: summary.txt, per_token.png, gpu_all.tgz
OUT=$(mktemp -d)                   # everything is written here first
mkdir -p "$DEST"
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python3}
DEADLINE=$(($(date +%s) + ${BUDGET:-540}))
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"

step() {  # step NAME LIMIT_S CMD...: time-limited, logged to $OUT/NAME.log
  local name=$1 limit=$2 t0 rc left
  shift 2
  left=$((DEADLINE - $(date +%s) - 5))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 15 ]; then echo "$name: skipped (out of time)" | tee -a "$SUMMARY"; return 124; fi
  t0=$(date +%s)
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  echo "$name: rc=$rc in $(($(date +%s) - t0)) s" | tee -a "$SUMMARY"
  return $rc
}

nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$SUMMARY"
step build 240 $PY setup.py build_ext --inplace || { tail -30 "$OUT/build.log"; exit 1; }
step tests 120 $PY -m pytest -q -p no:cacheprovider -m cuda tests --deselect tests/kernels/test_cuda_kernels.py
tail -3 "$OUT/tests.log" >>"$SUMMARY"
step kernels 120 $PY benchmarks/gpu_kernels.py --shapes llama2-7b --dtype float16 --out "$OUT/kernel_test_gpu.json"
tail -25 "$OUT/kernels.log" >>"$SUMMARY"
step prune 170 $PY benchmarks/prune_7b.py --layers 4 --json "$OUT/prune_7b.json"
tail -12 "$OUT/prune.log" >>"$SUMMARY"
step calibrate 60 $PY benchmarks/calibrate_7b.py --layers 2 --json "$OUT/calibrate_7b.json"
tail -8 "$OUT/calibrate.log" >>"$SUMMARY"
OUT="$OUT" step profile 120 bash benchmarks/profile_7b.sh
tail -8 "$OUT/profile.log" >>"$SUMMARY"
step prune70b 90 $PY benchmarks/prune_7b.py --shape llama-2-70b --layers 2 --methods wanda,sparsegpt --json "$OUT/prune_70b.json"
tail -8 "$OUT/prune70b.log" >>"$SUMMARY"
cp "$SUMMARY" "$DEST/summary.txt"
cp "$OUT/profile_7b/per_token.png" "$DEST/" 2>/dev/null
tar czf "$DEST/gpu_all.tgz" -C "$OUT" .
echo "================ summary"
cat "$SUMMARY"
