"""Train-step and inference speed of JAX vs an identical PyTorch build, on this CPU.

Run by hand (results go in bench/RESULTS.md):
  .venv/bin/python bench/train_step.py [--presets full,demo,tiny] [--dtypes float32,bfloat16]
      [--torch_python .venv-bench/bin/python] [--rounds 3] [--steps 3]

For each preset and dtype: compile time, FLOPs per slice (XLA cost analysis),
JAX train and inference slices/s, the same for PyTorch (channels_last,
autocast for bf16) in alternating rounds, their ratio, and the achieved
fraction of this machine's measured matmul rate. PyTorch runs in its own
process (bench/torch_reference.py), possibly another Python: the package never
imports torch. Without --torch_python the PyTorch columns are left empty.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from mtl_jax import parallel, train  # noqa: E402
from mtl_jax.config import loader  # noqa: E402

BATCH = {'full': 8, 'demo': 16, 'tiny': 8}


def matmul_gflops(dtype, n=4096, reps=5) -> float:
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  start = time.perf_counter()
  for _ in range(reps):
    f(a).block_until_ready()
  return 2 * n ** 3 * reps / (time.perf_counter() - start) / 1e9


def synthetic_batch(config, batch):
  s = config.data.image_size
  rng = np.random.default_rng(0)
  return {'image': rng.random((batch, s, s), np.float32),
          'mask': (rng.random((batch, s, s)) > 0.9).astype(np.int32),
          'has_mask': np.ones(batch, np.float32), 'label': np.zeros(batch, np.int32),
          'label_set': np.eye(3, dtype=np.float32)[np.zeros(batch, int)],
          'has_label': np.ones(batch, np.float32), 'valid': np.ones(batch, np.float32)}


class JaxBench:
  def __init__(self, preset, dtype, overrides=()):
    config = loader.load_config(f'configs/default.py:{preset}', list(overrides))
    config.model.compute_dtype = dtype
    config.train.global_batch_size = config.eval.batch_size = BATCH[preset]
    self.config, self.trainer = config, train.Trainer(config)
    self.batch = parallel.global_batch(synthetic_batch(config, BATCH[preset]),
                                       self.trainer.mesh)
    self.state = self.trainer.init(jax.random.key(0))
    start = time.perf_counter()
    compiled = self.trainer.train_step.lower(self.state, self.batch).compile()
    self.compile_seconds = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    self.train_flops_per_slice = cost.get('flops', float('nan')) / BATCH[preset]
    self.params = train.count_params(self.state['params'])

  def train_seconds(self, steps):
    self.state, terms = self.trainer.train_step(self.state, self.batch)
    jax.block_until_ready(terms)
    start = time.perf_counter()
    for _ in range(steps):
      self.state, terms = self.trainer.train_step(self.state, self.batch)
    jax.block_until_ready(terms)
    return (time.perf_counter() - start) / steps

  def infer_seconds(self, steps):
    variables, images = train.variables_of(self.state), self.batch['image']
    jax.block_until_ready(self.trainer.predict(variables, images))
    start = time.perf_counter()
    for _ in range(steps):
      out = self.trainer.predict(variables, images)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / steps


class TorchBench:
  def __init__(self, python):
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'torch_reference.py')
    self.proc = subprocess.Popen([python, script], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)

  def seconds(self, config, mode, dtype, steps, batch):
    request = {'mode': mode, 'dtype': dtype, 'steps': steps, 'batch': batch,
               'size': config.data.image_size, 'widths': list(config.model.widths),
               'bottleneck': config.model.bottleneck}
    self.proc.stdin.write(json.dumps(request) + '\n')
    self.proc.stdin.flush()
    return json.loads(self.proc.stdout.readline())


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--presets', default='full,demo,tiny')
  parser.add_argument('--dtypes', default='float32,bfloat16')
  parser.add_argument('--torch_python', default=None)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                      help='config override, e.g. --set model.conv_weight_grad=xla')
  args = parser.parse_args()

  peak = {d: matmul_gflops(getattr(jnp, d)) for d in args.dtypes.split(',')}
  print(f'matmul 4096^2 GFLOP/s: {peak}', flush=True)
  torch_bench = TorchBench(args.torch_python) if args.torch_python else None
  rows = []
  for preset in args.presets.split(','):
    for dtype in args.dtypes.split(','):
      bench = JaxBench(preset, dtype, args.set)
      b = BATCH[preset]
      times = {'jax_train': [], 'jax_infer': [], 'torch_train': [], 'torch_infer': []}
      for _ in range(args.rounds):  # alternate, so machine drift hits both
        times['jax_train'].append(bench.train_seconds(args.steps))
        times['jax_infer'].append(bench.infer_seconds(args.steps))
        if torch_bench:
          for mode in ('train', 'infer'):
            times[f'torch_{mode}'].append(torch_bench.seconds(
                bench.config, mode, dtype, args.steps, b)['seconds_per_step'])
      rate = {k: b / statistics.median(v) if v else None for k, v in times.items()}
      floor = peak[dtype] * 1e9 / bench.train_flops_per_slice
      row = dict(preset=preset, dtype=dtype, overrides=' '.join(args.set),
                 params=bench.params, batch=b,
                 compile_s=bench.compile_seconds,
                 gflop_per_trained_slice=bench.train_flops_per_slice / 1e9,
                 ms_per_step=1000 * statistics.median(times['jax_train']),
                 floor_slices_per_s=floor, fraction_of_floor=rate['jax_train'] / floor,
                 **{f'{k}_slices_per_s': v for k, v in rate.items()})
      if torch_bench:
        row['train_ratio'] = rate['jax_train'] / rate['torch_train']
        row['infer_ratio'] = rate['jax_infer'] / rate['torch_infer']
      rows.append(row)
      print(json.dumps(row), flush=True)
  keys = list(rows[0])
  print('\n| ' + ' | '.join(keys) + ' |\n' + '|---' * len(keys) + '|')
  for row in rows:
    print('| ' + ' | '.join(f'{v:.3g}' if isinstance(v, float) else str(v)
                            for v in row.values()) + ' |')


if __name__ == '__main__':
  main()
