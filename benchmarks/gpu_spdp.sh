#!/usr/bin/env bash
# One GPU-machine call for the one-token spdp work (run from the repository root, OUT=dir):
# build, the spdp kernel sweep (cuda_kernels.py --spdp), every CUDA test, ncu of the default and deep
# spdp launches, decode with DECODE_ARGS, then calibrate_7b.py with what is left of LIMIT seconds.
# TOOLCHAIN=1 runs toolchain_check.py --relink first; KERNELS=0 / NCU=0 skip the sweep / the profile;
# KERNELS_ARGS replaces "--spdp $KERNELS_EXTRA"; TESTS picks the test paths (default: tests; none: skip);
# EXTRA_CMD runs one more command through bash (EXTRA_LIMIT seconds, EXTRA_TAIL lines to the summary);
# DECODE_ARGS2 runs a second decode.py (an ablation) into $OUT/decode2; DECODE_SWEEP=1 times spdp_decode
# (CUDA against Triton, prefill_paths.py --decode-sweep).
# Everything lands in $OUT/all.tgz; summary.txt (short) is printed last.
set -uo pipefail
source benchmarks/gpu_common.sh
build
if [ "${TOOLCHAIN:-0}" = 1 ]; then  # which libstdc++ the library links, and whether a bad call raises
  step toolchain 150 python3 benchmarks/toolchain_check.py --relink
  cat "$OUT/toolchain.log" >>"$S"
fi
if [ "${KERNELS:-1}" = 1 ]; then
  step kernels 150 python3 benchmarks/cuda_kernels.py ${KERNELS_ARGS:---spdp ${KERNELS_EXTRA:-}} --json "$OUT/cuda_kernels.json"
  sed -n '/^## /,$p' "$OUT/kernels.log" >>"$S"
fi
if [ "${TESTS:-tests}" != none ]; then
  step tests 200 python3 -m pytest -q -p no:cacheprovider -m cuda ${TESTS:-tests}
  tail -3 "$OUT/tests.log" >>"$S"
fi
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
if [ -n "${EXTRA_CMD:-}" ]; then  # any other command, e.g. "python3 benchmarks/decode_kernels.py --top 24"
  step extra "${EXTRA_LIMIT:-200}" bash -c "$EXTRA_CMD"
  tail -"${EXTRA_TAIL:-30}" "$OUT/extra.log" >>"$S"
fi
if [ -n "${CALIB_ARGS:-}" ]; then
  # shellcheck disable=SC2086
  step calibrate 300 python3 benchmarks/calibrate_7b.py $CALIB_ARGS --json "$OUT/calibrate_7b.json"
  tail -12 "$OUT/calibrate.log" >>"$S"
fi
finish gpu_spdp
