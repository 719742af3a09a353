#!/usr/bin/env bash
# Where a decode token's time goes on the GPU (issue #9): a Llama-2-7B-shaped synthetic model,
# dense against teal at 50% activation sparsity, 32 decode tokens after warm-up, torch.profiler,
# CUDA-graph decode (kernels attributed through an eager reference token).
#
#   bash benchmarks/profile_7b.sh            # writes $OUT/profile_7b (or runs/profile_7b)
#   DTYPE=bfloat16 bash benchmarks/profile_7b.sh
#
# Output: per_token.csv, summary.json, per_token.png, trace_dense.json.gz, trace_teal.json.gz, and
# the mean-breakdown table on stdout.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
DEST="${OUT:-runs}/profile_7b"
mkdir -p "$DEST"
"$PY" -c 'import sys; from sparsekit.cli import main; main(sys.argv[1:])' profile \
  --model synthetic:llama-2-7b --format teal --activation-sparsity 0.5 --baseline dense \
  --max-new-tokens 32 --input-tokens 32 --dtype "${DTYPE:-float16}" --outdir "$DEST"
rc=$?
if [ -f "$DEST/summary.json" ]; then
  "$PY" - "$DEST/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
for label, v in s["variants"].items():
    parts = ", ".join(f"{k} {ms:.3f}" for k, ms in v["mean_ms"].items())
    print(f"{label}: TPOT {v['mean_tpot_ms']:.3f} ms = {parts} (sum {v['mean_total_ms']:.3f}; idle {v['mean_idle_ms']:.3f}; "
          f"adds up: {v['adds_up']}, max dev {v['max_deviation']:.3f}; {v['attribution']})")
for w in s.get("warnings", []):
    print("warning:", w)
PY
fi
exit $rc
