"""Would weight averaging (EMA / SWA-style) help? Evaluate the mean of the kept checkpoints.

Run by hand (results go in bench/RESULTS.md):
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

from mtl_jax import checkpointing, config_loader, evaluation, train  # noqa: E402

FIGURES = ('dice', 'auc_covid', 'accuracy', 'auc_macro')
SOURCES = ('covid_ct', 'mosmed', 'sars_cov2_ct')


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--split', default='validation')
  args = parser.parse_args()

  meta, _ = checkpointing.read_meta(args.workdir, 'latest')
  trainer = train.Trainer(config_loader.from_dict(meta['config']))
  ckpt = checkpointing.Checkpointer(args.workdir, read_only=True,
                                    best_metric=trainer.config.train.best_metric)
  try:
    steps = ckpt.kept_steps()
    states = [ckpt.restore(trainer.restore_target(), step=s)[0] for s in steps]
  finally:
    ckpt.close()

  def mean(*leaves):
    return jnp.mean(jnp.stack(leaves), axis=0).astype(leaves[0].dtype)

  averaged = dict(states[-1])
  for key in ('params', 'batch_stats'):
    averaged[key] = jax.tree.map(mean, *[s[key] for s in states])

  rows = []
  for name, state in ((f'last ({steps[-1]})', states[-1]),
                      (f'mean of {"/".join(map(str, steps))}', averaged)):
    results = evaluation.evaluate(trainer, state, args.split)
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
