"""Out-of-distribution score from encoder feature statistics.

Reconstruction error alone does not tell CT from MR, flat images or CT
shown with a wrong window (bench/RESULTS.md, OOD): the decoder reproduces
smooth images well whatever they are. The encoder's feature statistics do:
each slice is summarised by the spatial mean and standard deviation of every
channel at every encoder level (`features` of the model), and scored by its
Mahalanobis distance to the nearest training source (a slice is in
distribution when any one source explains it). The covariance is shared
across sources and kept to its leading principal components plus one
residual variance (probabilistic PCA), so it is stable with a few hundred
slices and small enough to store with the checkpoint.

Fitted on training slices; the threshold is the 99th percentile of the
distances of held-out validation slices (never seen by the fit).
"""

from __future__ import annotations

import numpy as np

NUM_COMPONENTS = 32
THRESHOLD_PERCENTILE = 99
KIND = 'encoder feature statistics, Mahalanobis distance to the nearest source (PPCA)'


def fit(train_features: dict, num_components: int = NUM_COMPONENTS) -> dict:
  """{source: (n, D) features} -> the reference (JSON-able), without threshold."""
  sources = [s for s, f in train_features.items() if len(f)]
  means = {s: np.asarray(train_features[s], np.float64).mean(0) for s in sources}
  centred = np.concatenate([np.asarray(train_features[s], np.float64) - means[s]
                            for s in sources])
  _, singular, vt = np.linalg.svd(centred, full_matrices=False)
  variances = singular ** 2 / max(len(centred) - len(sources), 1)
  k = max(1, min(num_components, len(variances) - 1))
  residual = float(np.mean(variances[k:])) if len(variances) > k else float(variances[-1])
  floor = 1e-6 * float(variances[0]) + 1e-12  # constant features carry no evidence
  return {'kind': KIND, 'sources': sources,
          'means': [means[s].astype(np.float32).tolist() for s in sources],
          'components': vt[:k].astype(np.float32).tolist(),
          'variances': np.maximum(variances[:k], floor).astype(np.float32).tolist(),
          'residual_variance': max(residual, floor),
          'num_fit': {s: int(len(train_features[s])) for s in sources}}


def distances(features, reference: dict) -> np.ndarray:
  """(N, D) features -> (N,) distance to the nearest source."""
  x = np.asarray(features, np.float64)
  components = np.asarray(reference['components'], np.float64)
  variances = np.asarray(reference['variances'], np.float64)
  best = np.full(len(x), np.inf)
  for mean in reference['means']:
    d = x - np.asarray(mean, np.float64)
    projected = d @ components.T
    residual = np.maximum(np.sum(d * d, -1) - np.sum(projected ** 2, -1), 0.0)
    squared = np.sum(projected ** 2 / variances, -1) + residual / reference['residual_variance']
    best = np.minimum(best, np.sqrt(squared))
  return best


def calibrate(reference: dict, held_out: dict) -> dict:
  """The reference with its threshold: a high percentile of held-out slices' distances."""
  values = np.concatenate([distances(f, reference) for f in held_out.values() if len(f)])
  return dict(reference, threshold=float(np.percentile(values, THRESHOLD_PERCENTILE)),
              threshold_rule=f'{THRESHOLD_PERCENTILE}th percentile of held-out validation '
                             'slices',
              num_calibration={s: int(len(f)) for s, f in held_out.items()})


def score(slice_features, reference: dict) -> dict:
  """A study's score: the median distance of its (eligible) slices, and the flag."""
  value = float(np.median(distances(slice_features, reference)))
  return {'feature_distance': value, 'feature_threshold': reference['threshold'],
          'flagged': bool(value > reference['threshold'])}
