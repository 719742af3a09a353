#!/usr/bin/env bash
# One GPU-machine call for the one-token spdp work (run from the repository root, OUT=dir):
# build, the spdp kernel sweep (cuda_kernels.py --spdp), every CUDA test, ncu of the default and deep
# spdp launches, decode with DECODE_ARGS, then calibrate_7b.py with what is left of LIMIT seconds.
# KERNELS=0 / NCU=0 skip the sweep / the profile; TESTS picks the test paths (default: tests);
# DECODE_ARGS2 runs a second decode.py (an ablation) into $OUT/decode2; DECODE_SWEEP=1 times spdp_decode
# (CUDA against Triton, prefill_paths.py --decode-sweep).
# Everything lands in $OUT/all.tgz; summary.txt (short) is printed last.
set -uo pipefail
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
LIMIT=${LIMIT:-570}
S="$OUT/summary.txt"
left() { echo $((LIMIT - SECONDS)); }
step() {  # step NAME MAX_SECONDS CMD...: run with the smaller of MAX and what is left, log to $OUT/NAME.log
  local name=$1 max=$2; shift 2
  local t=$(( $(left) < max ? $(left) : max )); t0=$SECONDS
  if [ "$t" -lt 20 ]; then echo "$name: skipped (time)" | tee -a "$S"; return; fi
  timeout "$t" "$@" >"$OUT/$name.log" 2>&1
  echo "$name: rc=$? in $((SECONDS - t0)) s" | tee -a "$S"
}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$S"
step build 240 python3 setup.py build_ext --inplace || true
grep -q "rc=0" <(tail -1 "$S") || { tail -30 "$OUT/build.log"; exit 1; }
if [ "${KERNELS:-1}" = 1 ]; then
  step kernels 150 python3 benchmarks/cuda_kernels.py --spdp ${KERNELS_EXTRA:-} --json "$OUT/cuda_kernels.json"
  sed -n '/^## /,$p' "$OUT/kernels.log" >>"$S"
fi
step tests 200 python3 -m pytest -q -p no:cacheprovider -m cuda ${TESTS:-tests}
tail -3 "$OUT/tests.log" >>"$S"
if [ "${DECODE_SWEEP:-0}" = 1 ]; then
  step decode_sweep 120 python3 benchmarks/prefill_paths.py --decode-sweep --json "$OUT/decode_sweep.json"
  grep -E "^(##|[0-9])" "$OUT/decode_sweep.log" >>"$S"
fi
[ "${NCU:-1}" = 1 ] && step ncu 90 ncu --clock-control none -k regex:matvec_kernel -c 6 --section SpeedOfLight --section Occupancy \
  --section LaunchStats --section WarpStateStats --section SchedulerStats python3 benchmarks/cuda_kernels.py --ncu
if [ -n "${DECODE_ARGS:-}" ]; then
  # shellcheck disable=SC2086
  step decode "${DECODE_LIMIT:-240}" python3 benchmarks/decode.py --out "$OUT/decode" $DECODE_ARGS
  tail -20 "$OUT/decode.log" >>"$S"
fi
if [ -n "${DECODE_ARGS2:-}" ]; then
  # shellcheck disable=SC2086
  step decode2 "${DECODE_LIMIT:-240}" python3 benchmarks/decode.py --out "$OUT/decode2" $DECODE_ARGS2
  tail -20 "$OUT/decode2.log" >>"$S"
fi
if [ -n "${CALIB_ARGS:-}" ]; then
  # shellcheck disable=SC2086
  step calibrate 300 python3 benchmarks/calibrate_7b.py $CALIB_ARGS --json "$OUT/calibrate_7b.json"
  tail -12 "$OUT/calibrate.log" >>"$S"
fi
# two files come back: the archive of every log, and the summary
tar czf /tmp/gpu_spdp_all.tgz -C "$OUT" --exclude=./summary.txt . || true
find "$OUT" -mindepth 1 ! -name summary.txt -delete
mv /tmp/gpu_spdp_all.tgz "$OUT/all.tgz"
echo "================ summary"
cat "$S"
