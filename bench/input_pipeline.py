"""How fast does the grain pipeline deliver slices, and is the train step ever waiting?

Run by hand (results go in bench/RESULTS.md):
  .venv/bin/python bench/input_pipeline.py --data_dir data --image_size 256

Measures slices/s of `pipeline.train_dataset` for the real-data mix of
configs/real.py (or synthetic_ct with --synthetic), with and without
augmentation, with 0 and N worker processes, and compares it with the
train step's consumption at the same size (the `demo` model widths unless
--full_model).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from mtl_jax import parallel, train  # noqa: E402
from mtl_jax.config import loader  # noqa: E402
from mtl_jax.data import pipeline  # noqa: E402
from mtl_jax.tfds_builders import registry  # noqa: E402


def delivered_rate(config, num_batches: int) -> float:
  it = pipeline.iterate(pipeline.train_dataset(config), 0, config)
  next(it)  # start-up (threads, workers) is not throughput
  start = time.perf_counter()
  for _ in range(num_batches):
    next(it)
  return num_batches * config.train.global_batch_size / (time.perf_counter() - start)


def step_rate(config, num_steps: int) -> float:
  trainer = train.Trainer(config)
  state = trainer.init(jax.random.key(0))
  batch = parallel.global_batch(pipeline.train_dataset(config)[0], trainer.mesh)
  state, terms = trainer.train_step(state, batch)
  jax.block_until_ready(terms)
  start = time.perf_counter()
  for _ in range(num_steps):
    state, terms = trainer.train_step(state, batch)
  jax.block_until_ready(terms)
  return num_steps * config.train.global_batch_size / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--data_dir', default='data')
  parser.add_argument('--image_size', type=int, default=256)
  parser.add_argument('--synthetic', action='store_true')
  parser.add_argument('--workers', type=int, default=2)
  parser.add_argument('--batches', type=int, default=30)
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--full_model', action='store_true')
  args = parser.parse_args()

  spec = 'configs/default.py:' + ('full' if args.full_model else 'demo')
  if not args.synthetic:
    spec = 'configs/real.py:' + ('gpu' if args.full_model else 'cpu')
  config = loader.load_config(spec)
  config.data.data_dir = args.data_dir
  config.data.image_size = args.image_size
  for name in config.data.sources:
    registry.build_dataset(name, args.data_dir, args.image_size)

  rows = []
  for augment in (False, True):
    for workers in (0, args.workers):
      config.data.augment, config.data.num_workers = augment, workers
      rate = delivered_rate(config, args.batches)
      rows.append((f'augment={augment}, workers={workers}', rate))
      print(f'pipeline {rows[-1][0]}: {rate:.1f} slices/s', flush=True)
  consumption = step_rate(config, args.steps)
  print(f'\n| {args.image_size}px, {os.cpu_count()} CPUs, {"+".join(config.data.sources)} '
        '| slices/s |\n|---|---|')
  for name, rate in rows:
    print(f'| pipeline, {name} | {rate:.1f} |')
  print(f'| train step consumes ({spec}, batch {config.train.global_batch_size}) '
        f'| {consumption:.1f} |')


if __name__ == '__main__':
  main()
