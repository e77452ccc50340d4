#!/usr/bin/env bash
# One prepared check for a lent GPU (one H100; ends within ~8 minutes), run by
# the device tool in the repo root. The device has jax (CUDA plugin), flax,
# optax and orbax-checkpoint but no pip index: first, here, fetch the other
# wheels mtl-jax imports into .whl/ (~24 MB; it ignores itself in git):
#   bash bench/fetch_device_wheels.sh
# then on the device, carrying .whl (the device tool's carry=['.whl']):
#   bash bench/device_check.sh [STEPS] [BATCH]
# It installs .whl/*.whl into /tmp/site (PYTHONPATH; mtl-jax itself from the
# repo), then measures, each step under its own time limit:
#   1. the paper-size train step (configs/default.py:full, 256 px, BATCH) in
#      f32 and bf16: steps/s, slices/s, MFU against the H100 SXM's dense peak
#      (bf16 989 TFLOP/s; f32 against TF32's 495, JAX's default precision, and
#      plain f32's 67), each beside `mtl-jax estimate`'s prediction for it
#      (bench/device_check.py step);
#   2. `mtl-jax predict` on a 512x512x300 volume (bench/predict_volume.py);
# and prints ONE Markdown table for bench/RESULTS.md (also $OUT/device_check.md
# when the tool's $OUT is set). A step that fails or runs out of time leaves
# its row out and says so; the table is printed anyway.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
STEPS="${1:-20}"; BATCH="${2:-32}"
DEST="${OUT:-/tmp/device_check}"; mkdir -p "$DEST"
SITE=/tmp/site
shopt -s nullglob
wheels=(.whl/*.whl)
if ((${#wheels[@]})); then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "${wheels[@]}" || { echo "device_check: installing .whl/ failed" >&2; exit 1; }
else
  echo "device_check: no .whl/*.whl; run bench/fetch_device_wheels.sh first (imports may fail)" >&2
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # peak memory is the program's, not the pool's
python3 -c 'import jax; print("devices:", jax.devices(), "jax", jax.__version__)' || exit 1

run() {  # LIMIT_S NAME COMMAND...: one measurement under its own time limit
  local limit=$1 name=$2; shift 2
  local start=$SECONDS
  if timeout "$limit" "$@" >"$DEST/$name.log" 2>&1; then
    echo "device_check: $name done in $((SECONDS - start)) s" >&2
  else
    echo "device_check: $name failed or passed ${limit} s (rc $?); its log's tail:" >&2
    tail -n 5 "$DEST/$name.log" >&2
  fi
}
run 170 step_float32 python3 bench/device_check.py step --dtype float32 \
  --batch "$BATCH" --steps "$STEPS" --json "$DEST/step_float32.json"
run 150 step_bfloat16 python3 bench/device_check.py step --dtype bfloat16 \
  --batch "$BATCH" --steps "$STEPS" --json "$DEST/step_bfloat16.json"
run 140 predict python3 bench/predict_volume.py --slices 300 --size 512 --batch_size 32 \
  --json "$DEST/predict.json"
steps=()
for f in "$DEST"/step_float32.json "$DEST"/step_bfloat16.json; do [[ -f $f ]] && steps+=("$f"); done
if ((${#steps[@]} == 0)); then echo "device_check: no train-step measurement" >&2; exit 1; fi
python3 bench/device_check.py table "${steps[@]}" --predict "$DEST/predict.json" \
  | tee "$DEST/device_check.md"
echo "device_check: ${SECONDS} s in all" >&2
