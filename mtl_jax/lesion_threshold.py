"""What the lesion threshold does to Dice, and a choice of it that does not peek.

A binary model marks a pixel as lesion when its probability exceeds
LESION_THRESHOLD (0.5). Soft training targets (model-made masks at
a low weight, normal slices pushed to background) can leave the head's
probabilities biased low, so a lower threshold may score better; but a
threshold read off the slices that report Dice is a leak. So evaluation
records, for a grid of thresholds, the pooled counts on ground-truth masks
and the lesion area on slices labelled normal (`ThresholdSweepAccumulator`,
in every evaluation JSON as `threshold_sweep`), and
`nested_choice` chooses each cross-validation fold's threshold from the
*other* folds' counts only (bench/cross_validate.py), which is what a
threshold adopted from the whole cross-validation would score on new data.
"""

from __future__ import annotations

import numpy as np

from mtl_jax import metrics

# A pixel is lesion when its sigmoid probability exceeds this (binary
# segmentation; multi-class models take the argmax). Evaluation, predict's
# replay and its report all read it from here.
LESION_THRESHOLD = 0.5
# 0.10, 0.15, ..., 0.90: includes LESION_THRESHOLD, so the sweep reproduces `dice`.
GRID = tuple(round(0.05 * k, 2) for k in range(2, 19))


class ThresholdSweepAccumulator(metrics.SegmentationAccumulator):
  """A binary model's `SegmentationAccumulator`, plus the same counts at every
  threshold of GRID from the probabilities (`update_sweep`,
  `update_normal_sweep`; the caller passes only the slices that count)."""

  def __init__(self, spacing=None):
    super().__init__(1, spacing)
    self._swept_slices = 0
    self._sweep_counts = np.zeros((len(GRID), 3), np.int64)  # pooled TP, FP, FN
    self._normal_area_sum = np.zeros(len(GRID), np.float64)
    self._normal_slices = 0

  def update_sweep(self, prob, target) -> None:
    """prob (N, H, W) lesion probabilities; target (N, H, W) ground truth (> 0 lesion)."""
    prob, truth = metrics._match_shapes(np.asarray(prob, np.float32),  # pylint: disable=protected-access
                                        np.asarray(target) > 0)
    for i, t in enumerate(GRID):
      self._sweep_counts[i] += metrics.binary_counts(prob > t, truth)[:3]
    self._swept_slices += len(prob)

  def update_normal_sweep(self, prob) -> None:
    """prob (N, H, W) on slices labelled normal: mean lesion area per threshold."""
    prob = np.asarray(prob, np.float32).reshape(len(prob), -1)
    for i, t in enumerate(GRID):
      self._normal_area_sum[i] += float((prob > t).mean(axis=1).sum())
    self._normal_slices += len(prob)

  def result(self) -> dict:
    out = super().result()
    if self._swept_slices or self._normal_slices:
      c = self._sweep_counts
      out['threshold_sweep'] = {
          'thresholds': list(GRID), 'num_seg_examples': self._swept_slices,
          'counts': c.tolist(),  # per threshold: pooled TP, FP, FN
          'dice': [float(metrics.dice_from_counts(*row)) for row in c] if self._swept_slices
                  else None,
          'num_normal_slices': self._normal_slices,
          'normal_lesion_area': (self._normal_area_sum / self._normal_slices).tolist()
                                if self._normal_slices else None}
    return out


def best_threshold(counts) -> float:
  """The GRID threshold of highest pooled Dice for (len(GRID), 3) counts."""
  dice = np.array([metrics.dice_from_counts(*row) for row in np.asarray(counts)])
  best = np.flatnonzero(dice >= dice.max() - 1e-12)
  return GRID[min(best, key=lambda i: abs(GRID[i] - LESION_THRESHOLD))]  # ties: nearest it


def nested_choice(fold_counts: dict) -> dict:
  """Each fold's Dice at a threshold chosen on the other folds.

  fold_counts: {fold: (len(GRID), 3) pooled TP, FP, FN on its held-out
  slices}. Returns per fold the threshold chosen without it and its Dice
  there and at LESION_THRESHOLD, the pooled Dice of both rules over all folds, and
  the threshold the whole cross-validation would adopt.
  """
  if len(fold_counts) < 2:
    raise ValueError(f'need at least 2 folds, got {len(fold_counts)}')
  counts = {k: np.asarray(v, np.int64) for k, v in fold_counts.items()}
  default_i = GRID.index(LESION_THRESHOLD)
  folds, pooled_default, pooled_chosen = {}, np.zeros(3, np.int64), np.zeros(3, np.int64)
  for k, own in counts.items():
    others = sum(v for j, v in counts.items() if j != k)
    chosen = best_threshold(others)
    row = own[GRID.index(chosen)]
    folds[k] = {'threshold': chosen, 'dice': float(metrics.dice_from_counts(*row)),
                'dice_at_default': float(metrics.dice_from_counts(*own[default_i]))}
    pooled_default += own[default_i]
    pooled_chosen += row
  return {'folds': folds, 'default': LESION_THRESHOLD,
          'pooled_dice_at_default': float(metrics.dice_from_counts(*pooled_default)),
          'pooled_dice_nested': float(metrics.dice_from_counts(*pooled_chosen)),
          'adopted_threshold': best_threshold(sum(counts.values()))}
