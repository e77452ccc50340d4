"""How much can a slice-level COVID AUC reach on a source whose labels are per patient?

  python bench/lesion_burden.py --checkpoint runs/quality/pseudo_masks/seed_0 \\
      [--which latest] [--sources mosmed,covid_ct,sars_cov2_ct] [--split validation]

MosMed labels every slice of a CT-1 study (< 25% of the lung involved) COVID,
though many of its slices show no lesion; UCSD and SARS-CoV-2 label slices
chosen from their studies. For each source this prints, from one trained
model's validation predictions:
- the classifier's COVID AUC (as `evaluate` reports it);
- the AUC of the predicted lesion area alone (the segmentation head's answer
  to "is there COVID pneumonia on this slice?");
- the share of COVID-labelled slices on which the model segments no lesion
  (< MIN_AREA of the image), and of normal/other slices on which it does;
- the classifier's AUC on the COVID slices that do show a predicted lesion
  against every negative slice.
A large share of COVID slices without a visible lesion caps any slice-level
AUC well below 1; that is a property of the labels, not of the model.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mtl_jax import evaluation, metrics  # noqa: E402
from mtl_jax import runtime as runtime_lib  # noqa: E402
from mtl_jax.data import features  # noqa: E402

MIN_AREA = metrics.VISIBLE_LESION_AREA


def slice_scores(loaded, split: str, source: str) -> dict:
  """Per slice: P(COVID), predicted lesion fraction, and COVID-vs-rest (-1: unknown)."""
  runtime = loaded.runtime
  out = {'p_covid': [], 'lesion': [], 'covid': []}
  for predictions, batch in evaluation.iterate_predictions(
      runtime, runtime.predict_fn(), loaded.variables, split, source, -1):
    valid = (batch['valid'] > 0) & (batch['has_label'] > 0)
    covid = features.covid_vs_rest(np.asarray(batch['label_set']))
    out['p_covid'].append(np.asarray(predictions['cls_probs'])[valid, 0])
    out['lesion'].append((np.asarray(predictions['seg_labels'])[valid] > 0).mean(axis=(1, 2)))
    out['covid'].append(covid[valid])
  return {k: np.concatenate(v) for k, v in out.items()}


def summary(scores: dict) -> dict:
  known = scores['covid'] >= 0
  p, lesion, covid = (scores[k][known] for k in ('p_covid', 'lesion', 'covid'))
  positive, visible = covid == 1, lesion >= MIN_AREA
  keep = ~positive | visible
  return {
      'slices': int(known.sum()), 'covid': int(positive.sum()),
      'auc_classifier': metrics.roc_auc(p, positive),
      'auc_lesion_area': metrics.roc_auc(lesion, positive),
      'covid_without_lesion': float(np.mean(~visible[positive])),
      'negative_with_lesion': float(np.mean(visible[~positive])),
      'auc_classifier_visible_covid': metrics.roc_auc(p[keep], positive[keep]),
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--checkpoint', required=True, help='a run folder')
  parser.add_argument('--which', default='latest', choices=('best', 'latest'))
  parser.add_argument('--sources', default='mosmed,covid_ct,sars_cov2_ct')
  parser.add_argument('--split', default='validation')
  args = parser.parse_args(argv)
  loaded = runtime_lib.load(args.checkpoint, args.which)
  print(f'{args.checkpoint} ({args.which}, step {loaded.step}), {args.split}; a lesion: '
        f'>= {MIN_AREA:.1%} of the slice segmented')
  print('| source | slices (COVID) | classifier AUC | lesion-area AUC | COVID slices '
        'without a lesion | negatives with one | classifier AUC, COVID with a lesion |')
  print('|---|---|---|---|---|---|---|')
  for source in args.sources.split(','):
    s = summary(slice_scores(loaded, args.split, source))
    print(f'| {source} | {s["slices"]} ({s["covid"]}) | {s["auc_classifier"]:.3f} | '
          f'{s["auc_lesion_area"]:.3f} | {s["covid_without_lesion"]:.1%} | '
          f'{s["negative_with_lesion"]:.1%} | {s["auc_classifier_visible_covid"]:.3f} |')
  return 0


if __name__ == '__main__':
  sys.exit(main())
