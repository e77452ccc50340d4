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

Sources differ in spread: MedSeg's slices (crops of many scanners, 40 in
the fit) lie further from their mean than MosMed's, and with one threshold
for all a third of MedSeg's held-out slices was flagged on one model
(bench/RESULTS.md, "relative distance"). So each source's distance is
divided by that source's median held-out distance (`source_scales`), and a
slice is scored by the smallest relative distance.

Fitted on training slices; the scales and the threshold (the 99th
percentile of relative distances) come from held-out validation slices
(never seen by the fit). A reference without `source_scales` (checkpoints
saved before) scores plain distances, as it was calibrated.
"""

from __future__ import annotations

import numpy as np

NUM_COMPONENTS = 32
THRESHOLD_PERCENTILE = 99
KIND = ('encoder feature statistics, Mahalanobis distance (PPCA) to the nearest source, '
        "relative to that source's median held-out distance")


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


def source_distances(features, reference: dict) -> np.ndarray:
  """(N, D) features -> (N, sources) Mahalanobis distance to each source's mean."""
  x = np.asarray(features, np.float64)
  components = np.asarray(reference['components'], np.float64)
  variances = np.asarray(reference['variances'], np.float64)
  out = []
  for mean in reference['means']:
    d = x - np.asarray(mean, np.float64)
    projected = d @ components.T
    residual = np.maximum(np.sum(d * d, -1) - np.sum(projected ** 2, -1), 0.0)
    squared = np.sum(projected ** 2 / variances, -1) + residual / reference['residual_variance']
    out.append(np.sqrt(squared))
  return np.stack(out, -1).reshape(len(x), len(reference['means']))


def distances(features, reference: dict) -> np.ndarray:
  """(N, D) features -> (N,) distance to the nearest source (relative to each
  source's own scale when the reference has one)."""
  scales = np.asarray(reference.get('source_scales') or [1.0] * len(reference['means']))
  return np.min(source_distances(features, reference) / scales, axis=-1)


def _source_scales(reference: dict, held_out: dict) -> list:
  """Each source's median held-out distance to its own mean; a source without
  held-out slices gets the median of the others' (its spread is unknown)."""
  known = {i: float(np.median(source_distances(held_out[s], reference)[:, i]))
           for i, s in enumerate(reference['sources']) if s in held_out}
  typical = float(np.median(list(known.values()))) if known else 1.0
  return [known.get(i, typical) for i in range(len(reference['sources']))]


def calibrate(reference: dict, held_out: dict) -> dict:
  """The reference with each source's scale and the threshold: a high
  percentile of held-out slices' relative distances."""
  held_out = {s: f for s, f in held_out.items() if len(f)}
  reference = dict(reference, source_scales=_source_scales(reference, held_out))
  values = np.concatenate([distances(f, reference) for f in held_out.values()])
  return dict(reference, threshold=float(np.percentile(values, THRESHOLD_PERCENTILE)),
              threshold_rule=f'{THRESHOLD_PERCENTILE}th percentile of held-out validation '
                             "slices' relative distances",
              num_calibration={s: int(len(f)) for s, f in held_out.items()})


def score(slice_features, reference: dict) -> dict:
  """A study's score: the median distance of its (eligible) slices, and the flag."""
  value = float(np.median(distances(slice_features, reference)))
  return {'feature_distance': value, 'feature_threshold': reference['threshold'],
          'flagged': bool(value > reference['threshold'])}
