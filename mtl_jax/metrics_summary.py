"""A split's metrics as one strict-JSON dict, with bootstrap confidence intervals.

The accumulators in `metrics` pool a split; this module resamples their
per-example values (images for Dice, examples for AUC) to put a 95% interval
beside the headline figures, as a reader of a small validation set needs.
`results_table` turns such dicts into the Markdown table that `mtl-jax
evaluate` and `mtl-jax demo` print.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from mtl_jax import jsonio, metrics


# Bootstrap resamples behind every 95% interval (config.eval.bootstrap_resamples
# defaults to it; bench scripts use it).
NUM_RESAMPLES = 1000


# -------------------------------------------------------------------- bootstrap
def bootstrap_ci(values_fn: Callable[[np.ndarray], float], n: int,
                 num_resamples: int = NUM_RESAMPLES, alpha: float = 0.05,
                 seed: int = 0) -> tuple[float, float]:
  """Percentile bootstrap (1 - alpha) interval of a statistic over n examples.

  Each resample draws n example indices with replacement from a seeded
  Generator and calls values_fn(indices). Non-finite values (e.g. an AUC of a
  resample with one class) are dropped; (nan, nan) if none are left.
  """
  if n <= 0 or num_resamples <= 0:
    return math.nan, math.nan
  rng = np.random.default_rng(seed)
  values = []
  for _ in range(num_resamples):
    v = float(values_fn(rng.integers(0, n, size=n)))
    if math.isfinite(v):
      values.append(v)
  if not values:
    return math.nan, math.nan
  low, high = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
  return float(low), float(high)


def bootstrap_dice_ci(per_image_dice, **kwargs) -> tuple[float, float]:
  """CI of the *mean per-image* Dice."""
  d = np.asarray(per_image_dice, np.float64)
  return bootstrap_ci(lambda i: d[i].mean(), d.size, **kwargs)


def bootstrap_pooled_dice_ci(per_image_counts, **kwargs) -> tuple[float, float]:
  """CI of the *pooled* Dice: resample images, pool their (TP, FP, FN, TN)."""
  c = np.asarray(per_image_counts, np.int64)

  def pooled(i):
    tp, fp, fn = c[i, :3].sum(axis=0)
    return metrics.dice_from_counts(tp, fp, fn)
  return bootstrap_ci(pooled, c.shape[0], **kwargs)


def bootstrap_auc_ci(scores, positives, **kwargs) -> tuple[float, float]:
  """CI of the binary ROC AUC; one-class resamples are skipped."""
  s = np.asarray(scores, np.float64).reshape(-1)
  y = np.asarray(positives).reshape(-1).astype(bool)
  return bootstrap_ci(lambda i: metrics.roc_auc(s[i], y[i]), s.size, **kwargs)


# -------------------------------------------------------------------- summarize
def segmentation_summary(acc: metrics.SegmentationAccumulator, bootstrap: bool = True,
                         num_resamples: int = NUM_RESAMPLES, seed: int = 0) -> tuple[dict, int]:
  """(results, examples counted). With bootstrap: `dice_ci95` (pooled Dice,
  matching `dice`) and `dice_per_image_mean_ci95`, when computable."""
  out = acc.result()
  if bootstrap and out['num_seg_examples'] > 0:
    kw = dict(num_resamples=num_resamples, seed=seed)
    out['dice_ci95'] = list(bootstrap_pooled_dice_ci(acc.per_image_counts, **kw))
    out['dice_per_image_mean_ci95'] = list(bootstrap_dice_ci(acc.per_image_dice, **kw))
  return out, out['num_seg_examples']


def classification_summary(acc: metrics.ClassificationAccumulator, bootstrap: bool = True,
                           num_resamples: int = NUM_RESAMPLES, seed: int = 0) -> tuple[dict, int]:
  """(reconstruction metrics, examples); same signature as the other tasks' summaries."""
  """(results, examples counted). With bootstrap: `auc_covid_ci95`, when computable."""
  out = acc.result()
  if bootstrap and not math.isnan(out['auc_covid']):
    ci = bootstrap_auc_ci(*acc.covid_known, num_resamples=num_resamples, seed=seed)
    if not math.isnan(ci[0]):
      out['auc_covid_ci95'] = list(ci)
  return out, out['num_cls_examples']


def reconstruction_summary(acc: metrics.ReconstructionAccumulator, bootstrap: bool = True,
                           num_resamples: int = NUM_RESAMPLES, seed: int = 0) -> tuple[dict, int]:
  del bootstrap, num_resamples, seed  # MSE over every slice: no interval reported
  out = acc.result()
  return out, out['num_recon_examples']


def combine(summaries) -> dict:
  """One flat, strict-JSON dict of every task's (results, count); nan becomes
  None; `num_examples` is the largest count (tasks score different subsets)."""
  out, counts = {}, []
  for results, count in summaries:
    out.update(results)
    counts.append(count)
  out['num_examples'] = max(counts) if counts else 0
  return jsonio.jsonable(out)


def summarize(seg: metrics.SegmentationAccumulator | None = None,
              cls: metrics.ClassificationAccumulator | None = None,
              rec: metrics.ReconstructionAccumulator | None = None,
              bootstrap: bool = True, num_resamples: int = NUM_RESAMPLES,
              seed: int = 0) -> dict:
  """`combine` for the three built-in tasks' accumulators, each optional."""
  kw = dict(bootstrap=bootstrap, num_resamples=num_resamples, seed=seed)
  return combine(fn(acc, **kw) for fn, acc in (
      (segmentation_summary, seg), (classification_summary, cls),
      (reconstruction_summary, rec)) if acc is not None)


# The table `mtl-jax evaluate` and `make demo` print: (label, key, CI key).
TABLE_ROWS = (
    ('Dice (pooled)', 'dice', 'dice_ci95'),
    ('Dice (mean per image)', 'dice_per_image_mean', None),
    ('IoU (pooled)', 'iou', None),
    ('HD95 (px)', 'hd95', None),
    ('Sensitivity (pixels)', 'sensitivity', None),
    ('Specificity (pixels)', 'specificity', None),
    ('Lesion area on normal slices', 'normal_lesion_area', None),
    ('Accuracy (3 classes)', 'accuracy', None),
    ('ROC AUC COVID vs rest', 'auc_covid', 'auc_covid_ci95'),
    ('ROC AUC macro one-vs-rest', 'auc_macro', None),
    ('Reconstruction MSE', 'recon_mse', None),
    ('Reconstruction PSNR (dB)', 'recon_psnr', None),
    ('Examples', 'num_examples', None),
)


def _cell(results: dict, key: str, ci_key: str | None) -> str:
  value = results.get(key)
  if value is None:
    return '-'
  if isinstance(value, int):
    return str(value)
  text = f'{value:.4f}' if abs(value) < 10 else f'{value:.2f}'
  ci = results.get(ci_key) if ci_key else None
  if ci and None not in ci:
    text += f' [{ci[0]:.3f}, {ci[1]:.3f}]'
  return text


def results_table(results_by_split: dict) -> str:
  """A Markdown table, one column per split, 95% bootstrap CIs in brackets."""
  splits = list(results_by_split)
  lines = ['| metric | ' + ' | '.join(splits) + ' |',
           '|---|' + '---|' * len(splits)]
  for label, key, ci_key in TABLE_ROWS:
    if all(results_by_split[s].get(key) is None for s in splits):
      continue
    lines.append(f'| {label} | ' + ' | '.join(
        _cell(results_by_split[s], key, ci_key) for s in splits) + ' |')
  return '\n'.join(lines)
