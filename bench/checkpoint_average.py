"""Would weight averaging (EMA / SWA-style) help? Evaluate the mean of the kept checkpoints.

Run by hand (results go in docs/log/YYYY-MM.md, summary in docs/results.md):
  .venv/bin/python bench/checkpoint_average.py --workdir runs/real_cpu4 [--split validation]

Restores every checkpoint under WORKDIR/checkpoints (the last
`train.keep_checkpoints` saves, e.g. steps 2500/2750/3000), averages their parameters
and BatchNorm statistics with equal weights, and evaluates the average and
the latest checkpoint alone on the same split. If the average is no better
than the last checkpoint, an EMA of the weights would not be either at the
end of a cosine schedule, where the learning rate is already near zero.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from mtl_jax.config import loader  # noqa: E402
from mtl_jax import checkpointing, evaluation  # noqa: E402
from mtl_jax import runtime as runtime_lib  # noqa: E402

SOURCES = loader.load_module(os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'configs', 'real.py')).AUC_SOURCES

FIGURES = ('dice', 'auc_covid', 'accuracy', 'auc_macro')


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--split', default='validation')
  args = parser.parse_args()

  loaded = runtime_lib.load(args.workdir, 'latest')
  runtime = loaded.runtime
  steps = checkpointing.finished_steps(os.path.join(args.workdir, checkpointing.LATEST_DIR))
  states = [runtime.restore(args.workdir, 'latest', step=s)[0] for s in steps]

  def mean(*leaves):
    return jnp.mean(jnp.stack(leaves), axis=0).astype(leaves[0].dtype)

  averaged = jax.tree.map(mean, *states)

  rows = []
  predict = runtime.predict_fn()
  for name, variables in ((f'last ({steps[-1]})', states[-1]),
                          (f'mean of {"/".join(map(str, steps))}', averaged)):
    results = evaluation.evaluate(runtime, predict, variables, args.split)
    by_source = results.get('by_source', {})
    rows.append([name] + [results.get(f) for f in FIGURES]
                + [by_source.get(s, {}).get('auc_covid') for s in SOURCES])

  header = ['weights', *FIGURES, *(f'{s} auc_covid' for s in SOURCES)]
  print('| ' + ' | '.join(header) + ' |')
  print('|' + '---|' * len(header))
  for row in rows:
    cells = [row[0]] + ['–' if v is None else f'{v:.3f}' for v in row[1:]]
    print('| ' + ' | '.join(cells) + ' |')


if __name__ == '__main__':
  main()
