#!/usr/bin/env bash
# One GPU-machine call that checks the whole user pipeline on CUDA (run from the repository root,
# OUT=dir): build, every CUDA test, then the demo model through calibrate (default relative rule)
# -> convert (teal) -> bench (compiled, CUDA graphs, dense baseline in the same run), and
# kernel-test on the tiny shapes. summary.txt (short) is printed last; the logs come back in all.tgz.
set -uo pipefail
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
LIMIT=${LIMIT:-570}
S="$OUT/summary.txt"
W=$(mktemp -d)
sk() { python3 -c 'import sys; from sparsekit.cli import main; main(sys.argv[1:])' "$@"; }
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
tar czf /tmp/gpu_pipeline_all.tgz -C "$OUT" --exclude=./summary.txt . || true
find "$OUT" -mindepth 1 ! -name summary.txt -delete
mv /tmp/gpu_pipeline_all.tgz "$OUT/all.tgz"
echo "================ summary"
cat "$S"
