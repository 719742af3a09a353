#!/usr/bin/env bash
# One short GPU-machine call: build, then compute-sanitizer memcheck and racecheck over the
# sanitizer smoke test (every CUDA kernel once on small shapes, spdp_decode and the balanced spdp path
# included), racecheck at
# one token and at six (the tensor-core spdp kernel).
# Run from the repository root with OUT=dir; summary.txt is printed last, the logs come back in all.tgz.
set -uo pipefail
source benchmarks/gpu_common.sh
build
step memcheck 90 compute-sanitizer --tool memcheck --error-exitcode 9 \
  python3 -m pytest -q -p no:cacheprovider -k sanitizer_smoke tests/kernels/test_cuda_kernels.py
grep -E "ERROR SUMMARY|passed|failed" "$OUT/memcheck.log" | tail -3 >>"$S"
step racecheck 90 compute-sanitizer --tool racecheck --error-exitcode 9 \
  python3 -m pytest -q -p no:cacheprovider -k "sanitizer_smoke and 1" tests/kernels/test_cuda_kernels.py
grep -E "RACECHECK SUMMARY|ERROR SUMMARY|passed|failed" "$OUT/racecheck.log" | tail -3 >>"$S"
# several tokens: the tensor-core spdp kernel (shared-memory ring, expansion tile, cluster reduction)
step racecheck_mm 120 compute-sanitizer --tool racecheck --error-exitcode 9 \
  python3 -m pytest -q -p no:cacheprovider -k "sanitizer_smoke and 6" tests/kernels/test_cuda_kernels.py
grep -E "RACECHECK SUMMARY|ERROR SUMMARY|passed|failed" "$OUT/racecheck_mm.log" | tail -3 >>"$S"
finish gpu_sanitize
