#!/usr/bin/env python3
"""Expand a grid of config overrides into runs; run them, print them, or tabulate them.

  launch/sweep.py --config configs/default.py:demo --root runs/sweep \\
      --grid loss.weights.recon=0,1 --grid optim.learning_rate=1e-3,2e-3 [--set K=V ...] \\
      [--dry_run | --collect] [--jobs 1] [--launcher 'launch/local_cluster.sh -n 2 --']

Each grid point gets its own workdir under --root, named by its overrides.
By default the runs execute locally in a queue (`--jobs` at a time), each
followed by `mtl-jax evaluate`; `--dry_run` prints the commands instead (to
paste into a cluster scheduler); `--collect` only gathers every run's
eval_<split>.json into one Markdown table (stdout) and a CSV (ROOT/results.csv).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import shlex
import subprocess
import sys
from concurrent import futures

COLUMNS = ('dice', 'iou', 'hd95', 'accuracy', 'auc_covid', 'auc_macro', 'recon_mse')


def expand(grid: list[str]) -> list[dict]:
  """['a=1,2', 'b=x'] -> [{'a': '1', 'b': 'x'}, {'a': '2', 'b': 'x'}]."""
  axes = []
  for item in grid:
    key, sep, values = item.partition('=')
    if not sep or not values:
      raise SystemExit(f'--grid {item!r} must look like KEY=V1,V2,...')
    axes.append([(key, v) for v in values.split(',')])
  return [dict(point) for point in itertools.product(*axes)]


def run_name(point: dict) -> str:
  name = '_'.join(f'{k.split(".")[-1]}={v}' for k, v in point.items()) or 'base'
  return ''.join(c if c.isalnum() or c in '=._-' else '-' for c in name)


def commands(args, point: dict) -> list[list[str]]:
  workdir = os.path.join(args.root, run_name(point))
  overrides = [f'--config.{k}={v}' for k, v in {**_pairs(args.set), **point}.items()]
  launcher = shlex.split(args.launcher) if args.launcher else []
  train = launcher + [args.mtl_jax, 'train', '--config', args.config,
                      '--workdir', workdir] + overrides
  evaluate = [args.mtl_jax, 'evaluate', '--workdir', workdir, '--split', args.split]
  return [train, evaluate]


def _pairs(items):
  return dict(item.split('=', 1) for item in items)


def collect(root: str, split: str) -> list[dict]:
  rows = []
  for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
    path = os.path.join(root, name, f'eval_{split}.json')
    if os.path.exists(path):
      with open(path) as f:
        results = json.load(f)
      rows.append({'run': name, **{c: results.get(c) for c in COLUMNS}})
  return rows


def markdown(rows: list[dict]) -> str:
  fmt = lambda v: '-' if v is None else (f'{v:.4f}' if isinstance(v, float) else str(v))
  lines = ['| run | ' + ' | '.join(COLUMNS) + ' |', '|---' * (len(COLUMNS) + 1) + '|']
  lines += ['| ' + ' | '.join(fmt(r[c]) for c in ('run',) + COLUMNS) + ' |' for r in rows]
  return '\n'.join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog=__doc__.split('\n\n', 1)[1])
  parser.add_argument('--config', default='configs/default.py:demo')
  parser.add_argument('--root', default='runs/sweep')
  parser.add_argument('--grid', action='append', default=[], help='KEY=V1,V2,...')
  parser.add_argument('--set', action='append', default=[], help='KEY=V for every run')
  parser.add_argument('--split', default='validation')
  parser.add_argument('--jobs', type=int, default=1)
  parser.add_argument('--launcher', default='', help='prefix for each train command')
  parser.add_argument('--mtl_jax', default='mtl-jax', help='the mtl-jax executable')
  mode = parser.add_mutually_exclusive_group()
  mode.add_argument('--dry_run', action='store_true')
  mode.add_argument('--collect', action='store_true')
  args = parser.parse_args(argv)

  if not args.collect:
    points = expand(args.grid)
    if args.dry_run:
      for point in points:
        for cmd in commands(args, point):
          print(shlex.join(cmd))
      return 0

    def run(point):
      for cmd in commands(args, point):
        if subprocess.run(cmd).returncode:
          return f'{run_name(point)}: failed: {shlex.join(cmd)}'
      return None

    with futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
      failures = [f for f in pool.map(run, points) if f]
    for failure in failures:
      print(failure, file=sys.stderr)
  rows = collect(args.root, args.split)
  print(markdown(rows))
  if rows:
    with open(os.path.join(args.root, 'results.csv'), 'w', newline='') as f:
      writer = csv.DictWriter(f, fieldnames=('run',) + COLUMNS)
      writer.writeheader()
      writer.writerows(rows)
  return 1 if not args.collect and failures else 0


if __name__ == '__main__':
  sys.exit(main())
