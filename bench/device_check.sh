#!/usr/bin/env bash
# One short check for a lent GPU (never needed otherwise): installs, runs the
# default config for a fixed number of steps on synthetic batches, and prints
# step time, slices/s, MFU (vs the GPU's measured bf16/f32 matmul rate) and
# peak device memory. Usage: bash bench/device_check.sh [STEPS] [BATCH]
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS="${1:-20}"; BATCH="${2:-64}"
python3 -m venv /tmp/mtl-venv && /tmp/mtl-venv/bin/pip install -q -e . 'jax[cuda12]'
/tmp/mtl-venv/bin/python - "$STEPS" "$BATCH" <<'PY'
import sys, time, jax, jax.numpy as jnp
sys.path.insert(0, 'bench')
import train_step as b
steps, batch = int(sys.argv[1]), int(sys.argv[2])
print(jax.devices())
for dtype in ('float32', 'bfloat16'):
  b.BATCH['full'] = batch
  bench = b.JaxBench('full', dtype)
  seconds = min(bench.train_seconds(steps) for _ in range(2))
  peak = b.matmul_gflops(getattr(jnp, dtype), n=8192, reps=10)
  flops = bench.train_flops_per_slice * batch / seconds / 1e9
  stats = jax.devices()[0].memory_stats() or {}
  print(f'{dtype}: {seconds * 1000:.1f} ms/step, {batch / seconds:.1f} slices/s, '
        f'MFU {flops / peak:.2%} of {peak:.0f} GFLOP/s matmul, compile {bench.compile_seconds:.1f} s, '
        f'peak memory {stats.get("peak_bytes_in_use", 0) / 2**30:.2f} GiB')
PY
