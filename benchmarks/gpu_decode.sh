#!/usr/bin/env bash
# Decode-speed session on the GPU machine (run from the repository root):
# build the extension, run the GPU tests of the decode path, then benchmarks/decode.py.
#   OUT=dir TESTS="tests/test_generate.py" DECODE_ARGS="--dtypes float16 --batches 1 --hf" bash benchmarks/gpu_decode.sh
# Optional: EXTRA_TESTS (test files run without the cuda marker filter), KERNELS_ARGS (cuda_kernels.py).
# What comes back in $OUT: summary.txt (short, last), decode.json, decode.jsonl, tests.log, build.log.
set -uo pipefail
DEST=${OUT:-runs/gpu_decode}
mkdir -p "$DEST"
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python3}
SUMMARY="$DEST/summary.txt"
: >"$SUMMARY"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$SUMMARY"
t0=$(date +%s)
$PY setup.py build_ext --inplace >"$DEST/build.log" 2>&1 || { tail -30 "$DEST/build.log"; exit 1; }
echo "build: $(($(date +%s) - t0)) s" | tee -a "$SUMMARY"
if [ -n "${TESTS:-}" ]; then
  t0=$(date +%s)
  timeout "${TESTS_LIMIT:-240}" $PY -m pytest -q -p no:cacheprovider -m cuda $TESTS >"$DEST/tests.log" 2>&1
  echo "tests: rc=$? in $(($(date +%s) - t0)) s: $(tail -1 "$DEST/tests.log")" | tee -a "$SUMMARY"
fi
if [ -n "${EXTRA_TESTS:-}" ]; then  # files whose tests run on the GPU when there is one (no marker)
  t0=$(date +%s)
  timeout "${TESTS_LIMIT:-240}" $PY -m pytest -q -p no:cacheprovider $EXTRA_TESTS >"$DEST/extra_tests.log" 2>&1
  echo "extra tests: rc=$? in $(($(date +%s) - t0)) s: $(tail -1 "$DEST/extra_tests.log")" | tee -a "$SUMMARY"
fi
if [ -n "${KERNELS_ARGS:-}" ]; then
  # shellcheck disable=SC2086
  timeout 150 $PY benchmarks/cuda_kernels.py $KERNELS_ARGS --json "$DEST/cuda_kernels.json" >"$DEST/kernels.log" 2>&1
  echo "kernels: rc=$?" | tee -a "$SUMMARY"
  tail -25 "$DEST/kernels.log" >>"$SUMMARY"
fi
if [ -n "${DECODE_ARGS:-}" ]; then
  # shellcheck disable=SC2086
  $PY benchmarks/decode.py --out "$DEST" $DECODE_ARGS 2>&1 | tee "$DEST/decode.log" | tail -40 >>"$SUMMARY"
fi
echo "================ summary"
cat "$SUMMARY"
