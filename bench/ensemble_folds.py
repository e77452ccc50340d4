"""Would an ensemble of fold models (nnU-Net's default at inference) classify better?

Run by hand (results go in docs/log/YYYY-MM.md, summary in docs/results.md):
  .venv/bin/python bench/ensemble_folds.py runs/cv/fold_1 runs/cv/fold_2 ... [--which latest]

The cross-validation folds differ only in which MedSeg slices they hold out;
every other source has the same validation split in every fold (its build
is linked, not rebuilt: bench/cross_validate.py). So on the sources with a
within-source COVID AUC, the mean of the fold models' class probabilities
can be scored honestly against each fold model alone, on the same slices.
(Not Dice: each fold's held-out MedSeg slices are in the other folds'
training data.) Per source: every model's AUC, the ensemble's, and a paired
bootstrap CI of (ensemble - mean single-model AUC), resampling slices.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from mtl_jax.config import loader  # noqa: E402
from mtl_jax import evaluation, metrics, metrics_summary  # noqa: E402
from mtl_jax import runtime as runtime_lib  # noqa: E402
from mtl_jax.data.features import COVID, covid_vs_rest  # noqa: E402

AUC_SOURCES = loader.load_module(os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'configs', 'real.py')).AUC_SOURCES


def covid_scores(loaded, source: str, split: str):
  """(P(COVID) per slice, COVID-vs-rest per slice: 1, 0 or -1 unknown)."""
  runtime = loaded.runtime
  predict = runtime.predict_fn()
  scores, truth = [], []
  for predictions, batch in evaluation.iterate_predictions(
      runtime, predict, loaded.variables, split, source, -1):
    keep = (np.asarray(batch['valid']) > 0) & (np.asarray(batch['has_label']) > 0)
    scores.append(np.asarray(predictions['cls_probs'])[keep, COVID])
    truth.append(covid_vs_rest(np.asarray(batch['label_set']))[keep])
  return np.concatenate(scores), np.concatenate(truth)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('workdirs', nargs='+')
  parser.add_argument('--which', default='latest', choices=('best', 'latest'))
  parser.add_argument('--split', default='validation')
  parser.add_argument('--sources', default=','.join(AUC_SOURCES))
  args = parser.parse_args()
  if len(args.workdirs) < 2:
    parser.error('an ensemble needs at least two workdirs')

  per_source = {s: [] for s in args.sources.split(',')}
  for workdir in args.workdirs:
    loaded = runtime_lib.load(workdir, args.which)
    for source, runs in per_source.items():
      runs.append(covid_scores(loaded, source, args.split))

  names = [os.path.basename(os.path.normpath(w)) for w in args.workdirs]
  print(f'| source | {" | ".join(names)} | mean single | ensemble [95% CI] '
        '| ensemble - mean single [95% CI] |')
  print('|---|' + '---|' * (len(names) + 3))
  for source, runs in per_source.items():
    truth = runs[0][1]
    for _, other in runs[1:]:
      if not np.array_equal(other, truth):
        raise SystemExit(f'{source}: the workdirs saw different {args.split} slices '
                         '(not the same build of this source)')
    known = truth >= 0
    scores = np.stack([s[known] for s, _ in runs])  # (models, slices)
    positives = truth[known] == 1
    ensemble = scores.mean(axis=0)

    def gain(i):
      single = np.mean([metrics.roc_auc(s[i], positives[i]) for s in scores])
      return metrics.roc_auc(ensemble[i], positives[i]) - single

    singles = [metrics.roc_auc(s, positives) for s in scores]
    low, high = metrics_summary.bootstrap_auc_ci(ensemble, positives)
    g_low, g_high = metrics_summary.bootstrap_ci(gain, positives.size)
    print(f'| {source} ({positives.size} slices) | '
          + ' | '.join(f'{a:.3f}' for a in singles)
          + f' | {np.mean(singles):.3f} | {metrics.roc_auc(ensemble, positives):.3f} '
          f'[{low:.3f}, {high:.3f}] | {gain(np.arange(positives.size)):+.3f} '
          f'[{g_low:+.3f}, {g_high:+.3f}] |')


if __name__ == '__main__':
  main()
