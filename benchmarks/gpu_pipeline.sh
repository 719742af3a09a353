#!/usr/bin/env bash
# One GPU-machine call that checks the whole user pipeline on CUDA (run from the repository root,
# OUT=dir): build, every CUDA test, then the demo model through calibrate (default relative rule)
# -> convert (teal) -> bench (compiled, CUDA graphs, dense baseline in the same run), and
# kernel-test on the tiny shapes. summary.txt (short) is printed last; the logs come back in all.tgz.
set -uo pipefail
source benchmarks/gpu_common.sh
W=$(mktemp -d)
sk() { python3 -c 'import sys; from sparsekit.cli import main; main(sys.argv[1:])' "$@"; }
build
step tests 200 python3 -m pytest -q -p no:cacheprovider -m cuda ${TESTS:-tests}
tail -3 "$OUT/tests.log" >>"$S"
export -f sk
step calibrate 90 bash -c "sk calibrate --model demo --device cuda --out $W/cal --sparsity 0.5 --eval"
tail -8 "$OUT/calibrate.log" >>"$S"
step convert 60 bash -c "sk convert --model demo --format teal --calibration $W/cal --activation-sparsity 0.5 --out $W/teal"
tail -3 "$OUT/convert.log" >>"$S"
step bench 150 bash -c "sk bench --model $W/teal --baseline dense --max-new-tokens 64 --repeat 5 --json > $OUT/bench.json"
tail -14 "$OUT/bench.log" >>"$S"
step kernel_test 90 bash -c "sk kernel-test --device cuda --shapes tiny"
tail -4 "$OUT/kernel_test.log" >>"$S"
finish gpu_pipeline
