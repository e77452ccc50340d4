"""Where a train step's time goes on this CPU: a jax.profiler trace, by HLO op.

Run by hand:
  .venv/bin/python bench/profile_step.py [--preset full] [--dtype float32] [--steps 2]
  XLA_FLAGS=... .venv/bin/python bench/profile_step.py ...   # compare XLA flags

Traces `--steps` train steps (after a warm-up), reads the XSpace back with
`jax.profiler.ProfileData` (no TensorBoard needed) and sums the duration of
each op's executions on the host threads, grouped by op kind (convolution,
dot, YNN/XNN library fusion, loop fusion, ...). Prints the top ops and the
kind totals as fractions of the traced wall time.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402

from train_step import JaxBench  # noqa: E402  (same model, batch and state)


def output_shapes(hlo_text: str) -> dict:
  """HLO instruction name -> its output shape, from the compiled module text."""
  found = re.findall(r'^\s*(?:ROOT )?%([\w.\-]+) = (\(?[a-z0-9]+\[[\d,]*\])', hlo_text,
                     re.MULTILINE)
  return dict(found)


def op_kind(name: str, shape: str = '') -> str:
  """A coarse kind from an HLO instruction name (`ynn_fusion.3`, `convolution.2`).

  A library conv whose output is a 3x3 kernel ([O,3,3,I] or [3,3,I,O]) is a
  weight gradient; that distinction is what the speed work needed.
  """
  base = re.sub(r'[.\d]+$', '', name)
  if base in ('ynn_fusion', 'xnn_fusion', 'convolution') and re.search(
      r'\[(\d+,)?3,3,\d+', shape):
    return base + ' (conv weight gradient)'
  for kind in ('ynn_fusion', 'xnn_fusion', 'onednn', 'convolution', 'dot',
               'reduce', 'transpose', 'copy', 'pad', 'slice', 'concatenate',
               'all-reduce', 'select', 'scatter'):
    if kind in base:
      return kind
  return 'loop fusion' if 'fusion' in base else base


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--preset', default='full')
  parser.add_argument('--dtype', default='float32')
  parser.add_argument('--steps', type=int, default=2)
  parser.add_argument('--top', type=int, default=25)
  parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                      help='config override, e.g. --set model.conv_weight_grad=xla')
  args = parser.parse_args()

  bench = JaxBench(args.preset, args.dtype, args.set)
  shapes = output_shapes(bench.trainer.train_step.lower(
      bench.state, bench.batch).compile().as_text())
  bench.train_seconds(1)  # warm
  logdir = tempfile.mkdtemp(prefix='mtl_profile_')
  start = time.perf_counter()
  with jax.profiler.trace(logdir):
    bench.train_seconds(args.steps)
  wall = time.perf_counter() - start
  path = sorted(glob.glob(os.path.join(logdir, '**', '*.xplane.pb'), recursive=True))[-1]
  data = jax.profiler.ProfileData.from_file(path)
  by_op, by_kind = collections.Counter(), collections.Counter()
  for plane in data.planes:
    if not plane.name.startswith('/host:CPU'):
      continue
    for line in plane.lines:
      for event in line.events:
        name = event.name
        # Thunk executions are named by their HLO instruction; skip Python
        # and runtime frames (they contain spaces, '::' or '$').
        if ' ' in name or '::' in name or '$' in name or name.startswith('Pjit'):
          continue
        ms = event.duration_ns / 1e6
        by_op[name] += ms
        by_kind[op_kind(name, shapes.get(name, ''))] += ms
  total = sum(by_kind.values())
  print(f'{args.preset} {args.dtype}: {args.steps} steps traced in {wall:.2f} s; '
        f'op time summed over threads {total / 1000:.2f} s')
  print('\n| op kind | ms/step | share of op time |\n|---|---|---|')
  for kind, ms in by_kind.most_common():
    print(f'| {kind} | {ms / args.steps:.0f} | {ms / total:.1%} |')
  print('\n| top op | output | ms/step | share |\n|---|---|---|---|')
  for name, ms in by_op.most_common(args.top):
    print(f'| {name} | {shapes.get(name, "")} | {ms / args.steps:.0f} | {ms / total:.1%} |')


if __name__ == '__main__':
  main()
