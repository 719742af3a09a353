# Shared by the one-call GPU scripts (gpu_spdp.sh, gpu_pipeline.sh); source it from the repository
# root with OUT set. Sets the build environment, the summary file $S and LIMIT (seconds for the
# whole call), and defines:
#   step NAME MAX_SECONDS CMD...  run CMD with the smaller of MAX and what is left, log to $OUT/NAME.log
#   build                          print the GPU, build the extension in place (exit on failure)
#   finish NAME                    pack every log into $OUT/all.tgz, print summary.txt last
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
LIMIT=${LIMIT:-570}
S="$OUT/summary.txt"
left() { echo $((LIMIT - SECONDS)); }
step() {
  local name=$1 max=$2; shift 2
  local t=$(( $(left) < max ? $(left) : max )); t0=$SECONDS
  if [ "$t" -lt 20 ]; then echo "$name: skipped (time)" | tee -a "$S"; return; fi
  timeout "$t" "$@" >"$OUT/$name.log" 2>&1
  echo "$name: rc=$? in $((SECONDS - t0)) s" | tee -a "$S"
}
build() {
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$S"
  step build 240 python3 setup.py build_ext --inplace || true
  grep -q "rc=0" <(tail -1 "$S") || { tail -30 "$OUT/build.log"; exit 1; }
}
finish() {  # two files come back: the archive of every log, and the summary
  tar czf "/tmp/$1_all.tgz" -C "$OUT" --exclude=./summary.txt . || true
  find "$OUT" -mindepth 1 ! -name summary.txt -delete
  mv "/tmp/$1_all.tgz" "$OUT/all.tgz"
  echo "================ summary"
  cat "$S"
}
