"""Benchmark `mtl-jax predict` end to end on one synthetic CT volume.

    python bench/predict_volume.py [--slices 300] [--size 512] [--preset full]
        [--batch_size 32] [--tta] [--json FILE]

Writes a synthetic HU volume (one synthetic patient, apex to base) as NIfTI
to a temporary folder, saves a randomly initialised model of the preset
(timing does not depend on the weights) as a checkpoint, then measures:

* end-to-end seconds of `predict.run` (checkpoint restore + compile + read +
  predict + lung mask + write), and read -> write seconds with the model
  already loaded and compiled;
* the FLOP floor: model FLOPs per slice (XLA cost analysis of the compiled
  apply) x slices (x2 with --tta) / this machine's measured float32 matmul
  rate (a 4096x4096 jnp.dot);
* peak RSS of the process (resource.getrusage).

Prints a Markdown table row. The full 300-slice run takes minutes on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

from mtl_jax import checkpointing, predict  # noqa: E402
from mtl_jax.config import loader  # noqa: E402
from mtl_jax import runtime as runtime_lib  # noqa: E402
from mtl_jax.data import synthetic  # noqa: E402

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')


def synthetic_volume_nifti(path, size, slices, spacing_z=1.0):
  """(X, Y, Z) RAS HU volume of one synthetic patient, saved as int16 NIfTI."""
  rng = np.random.default_rng(0)
  patient = synthetic.sample_patient(rng)
  vol = np.zeros((size, size, slices), np.int16)
  for i, level in enumerate(np.linspace(0.02, 0.98, slices)):
    kind = 'covid19' if 0.3 < level < 0.8 else 'normal'
    hu, _ = synthetic.generate_slice(rng, kind, size, patient=patient, level=level)
    vol[:, :, slices - 1 - i] = np.round(hu)[::-1, ::-1].T
  pixel = synthetic.FIELD_OF_VIEW_MM / size
  nib.save(nib.Nifti1Image(vol, np.diag([pixel, pixel, spacing_z, 1.0])), path)


def save_initialised_checkpoint(config, workdir):
  """A workdir holding a randomly initialised model (params and BatchNorm
  statistics: all that predict restores) as its latest checkpoint."""
  runtime = runtime_lib.Runtime(config)
  key = jax.random.key(config.seed)
  variables = jax.jit(runtime.init_variables, out_shardings=runtime.replicated)(key, key)
  ckpt = checkpointing.Checkpointer(workdir)
  ckpt.save_latest(0, variables, runtime_lib.checkpoint_meta(config, 0, {}))
  ckpt.close()
  return runtime, variables


def flops_per_slice(runtime, variables, size, batch=8):
  x = jnp.zeros((batch, size, size), jnp.float32)
  cost = jax.jit(runtime.apply_fn()).lower(variables, x).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost['flops']) / batch


def matmul_gflops(n=4096, repeats=3):
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  dot = jax.jit(jnp.dot)
  dot(a, a).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    t = time.perf_counter()
    dot(a, a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best / 1e9


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--slices', type=int, default=300)
  parser.add_argument('--size', type=int, default=512)
  parser.add_argument('--preset', default='full')
  parser.add_argument('--batch_size', type=int, default=32)
  parser.add_argument('--tta', action='store_true')
  parser.add_argument('--json', default=None, help='also write the figures here')
  args = parser.parse_args()

  config = loader.load_config(os.path.join(REPO, 'configs', 'default.py') +
                                     f':{args.preset}')
  with tempfile.TemporaryDirectory(prefix='bench-predict-') as tmp:
    t = time.perf_counter()
    volume = os.path.join(tmp, 'volume.nii.gz')
    synthetic_volume_nifti(volume, args.size, args.slices)
    print(f'wrote {args.size}x{args.size}x{args.slices} volume in '
          f'{time.perf_counter() - t:.0f} s', file=sys.stderr)
    workdir = os.path.join(tmp, 'model')
    runtime, variables = save_initialised_checkpoint(config, workdir)
    flops = flops_per_slice(runtime, variables, config.data.image_size)
    del runtime, variables
    gflops = matmul_gflops()

    t = time.perf_counter()
    predictor = predict.Predictor(workdir, args.batch_size, args.tta)
    # One warm-up batch so that read -> write below excludes compilation.
    predictor.predict_batch(np.zeros((predictor.batch_size, predictor.image_size,
                                      predictor.image_size), np.float32))
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    predict.run(workdir, volume, os.path.join(tmp, 'out'), predictor=predictor)
    run_s = time.perf_counter() - t
  passes = 2 if args.tta else 1
  floor_s = flops * args.slices * passes / (gflops * 1e9)
  peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
  n = jax.device_count()
  device = f'{jax.devices()[0].platform} x{n} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)'
  print('| volume | model | device | batch | tta | end-to-end s (load+compile+read->write) '
        '| read->write s | slices/s | GFLOP/slice | matmul GFLOP/s | FLOP floor s '
        '| floor / actual | peak RSS GiB |')
  print('|---|---|---|---|---|---|---|---|---|---|---|---|---|')
  print(f'| {args.size}x{args.size}x{args.slices} HU NIfTI | {args.preset} '
        f'{config.data.image_size}px | {device} | {predictor.batch_size} | {args.tta} '
        f'| {load_s + run_s:.1f} | {run_s:.1f} | {args.slices / run_s:.2f} '
        f'| {flops / 1e9:.2f} | {gflops:.0f} | {floor_s:.1f} | {floor_s / run_s:.2f} '
        f'| {peak_gib:.2f} |')
  if args.json:
    stats = jax.devices()[0].memory_stats() or {}
    with open(args.json, 'w', encoding='utf-8') as f:
      json.dump({'volume': f'{args.size}x{args.size}x{args.slices}', 'preset': args.preset,
                 'image_size': int(config.data.image_size), 'device': device,
                 'batch': predictor.batch_size, 'tta': args.tta,
                 'end_to_end_s': load_s + run_s, 'read_write_s': run_s,
                 'slices_per_s': args.slices / run_s, 'gflop_per_slice': flops / 1e9,
                 'matmul_gflops': gflops, 'floor_s': floor_s, 'peak_rss_gib': peak_gib,
                 'device_peak_bytes': stats.get('peak_bytes_in_use', 0)}, f, indent=1)


if __name__ == '__main__':
  main()
