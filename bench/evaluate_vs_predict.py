"""Do `mtl-jax evaluate` and `mtl-jax predict` agree on the UCSD validation slices?

Run by hand (results go in docs/log/YYYY-MM.md, summary in docs/results.md):
  .venv/bin/python bench/evaluate_vs_predict.py --workdir runs/real_cpu_e \
      [--ucsd ../shared/data/ucsd_covid_ct] [--checkpoint best]

The evaluate path reads the built `covid_ct` validation split (pipeline
preprocessing); the predict path reads the original image files of the
official validation lists (`splits/valCT_*.txt`) through `mtl-jax predict`'s
replay. Prints each path's COVID-vs-non-COVID ROC AUC with a bootstrap 95% CI.
With `per_image` standardisation the two should agree to storage precision;
with `per_source` they differ by design (docs/data.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mtl_jax import evaluation, metrics, metrics_summary, predict, volume_io  # noqa: E402
from mtl_jax.data import tables  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--ucsd', default=os.path.join(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '..', 'shared', 'data',
      'ucsd_covid_ct'))
  parser.add_argument('--checkpoint', default='best', choices=('best', 'latest'))
  args = parser.parse_args()

  evaluated = evaluation.evaluate_workdir(args.workdir, 'validation', args.checkpoint)
  ucsd = evaluated['by_source']['covid_ct']

  predictor = predict.Predictor(args.workdir, which=args.checkpoint)
  scores, positives = [], []
  with tempfile.TemporaryDirectory() as tmp:
    for folder, positive in (('CT_COVID', True), ('CT_NonCOVID', False)):
      for name in tables.read_list(os.path.join(args.ucsd, 'splits', f'val{folder}.txt')):
        study = volume_io.read_study(os.path.join(args.ucsd, 'images', folder, name))
        report = predictor.predict_study(study, os.path.join(tmp, 'out'))
        scores.append(report['classification']['probabilities']['covid19'])
        positives.append(positive)
  scores, positives = np.asarray(scores), np.asarray(positives)
  ci = metrics_summary.bootstrap_auc_ci(scores, positives, num_resamples=metrics_summary.NUM_RESAMPLES, seed=0)
  print('| path | slices | UCSD AUC COVID vs non-COVID [95% CI] |')
  print('|---|---|---|')
  low, high = ucsd.get('auc_covid_ci95') or (float('nan'),) * 2
  print(f'| evaluate (built split) | {ucsd["num_auc_covid_examples"]} | '
        f'{ucsd["auc_covid"]:.3f} [{low:.3f}, {high:.3f}] |')
  print(f'| predict (original files) | {len(scores)} | '
        f'{metrics.roc_auc(scores, positives):.3f} [{ci[0]:.3f}, {ci[1]:.3f}] |')


if __name__ == '__main__':
  main()
