"""Evaluation metrics on host numpy arrays (no jax): segmentation, classification,
reconstruction (confidence intervals and the JSON summary: metrics_summary).

Accumulators pool over a whole split, so metrics that are not averages of
batch values (pooled Dice, ROC AUC) are computed once over every example.

Conventions (callers rely on these):
* Segmentation foreground is `label > 0` (or `label == k` for class k).
* Dice / IoU of an empty prediction against an empty target is 1.0 (nothing to
  find, nothing found). Sensitivity with an empty target and specificity with
  no negative pixels are nan (undefined, not perfect).
* HD95 of two empty masks is 0.0; of exactly one empty mask it is nan (no
  finite distance exists); the accumulator averages the finite values and
  reports how many it skipped.
* "Pooled" means counts summed over all pixels of all images, then one ratio;
  "per image" means one ratio per image, then the mean. Pooled Dice weights
  large lesions more; per-image Dice weights every image equally.
* `result()` dicts may hold float('nan'); `metrics_summary.summarize` turns
  nan into None so its output is strict JSON.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import ndimage

from mtl_jax.data.features import COVID

PSNR_CAP_DB = 100.0


# ----------------------------------------------------------------- segmentation
def _foreground(x, label: int | None = None) -> np.ndarray:
  x = np.asarray(x)
  if label is not None:
    return x == label
  return x if x.dtype == bool else x > 0


def _masks(pred, target, label):
  p, t = _foreground(pred, label), _foreground(target, label)
  if p.shape != t.shape:
    raise ValueError(f'pred shape {p.shape} != target shape {t.shape}')
  return p, t


def binary_counts(pred, target, *, label: int | None = None) -> tuple[int, int, int, int]:
  """(TP, FP, FN, TN) pixel counts of two masks of the same shape."""
  p, t = _masks(pred, target, label)
  tp = int(np.count_nonzero(p & t))
  fp = int(np.count_nonzero(p & ~t))
  fn = int(np.count_nonzero(~p & t))
  return tp, fp, fn, int(p.size) - tp - fp - fn


def dice_from_counts(tp, fp, fn) -> float:
  """Dice from pixel counts; 1 when neither mask has a pixel (nothing to find, none found)."""
  denom = 2 * tp + fp + fn
  return 1.0 if denom == 0 else 2.0 * tp / denom


def _iou_from(tp, fp, fn) -> float:
  denom = tp + fp + fn
  return 1.0 if denom == 0 else tp / denom


def _ratio(num, denom) -> float:
  return math.nan if denom == 0 else num / denom


def dice(pred, target, *, label: int | None = None) -> float:
  """2|P∩T| / (|P|+|T|); 1.0 when both are empty."""
  tp, fp, fn, _ = binary_counts(pred, target, label=label)
  return dice_from_counts(tp, fp, fn)


def iou(pred, target, *, label: int | None = None) -> float:
  """|P∩T| / |P∪T|; 1.0 when both are empty."""
  tp, fp, fn, _ = binary_counts(pred, target, label=label)
  return _iou_from(tp, fp, fn)


def sensitivity(pred, target, *, label: int | None = None) -> float:
  """TP / (TP+FN); nan when the target has no foreground."""
  tp, _, fn, _ = binary_counts(pred, target, label=label)
  return _ratio(tp, tp + fn)


def specificity(pred, target, *, label: int | None = None) -> float:
  """TN / (TN+FP); nan when the target has no background."""
  _, fp, _, tn = binary_counts(pred, target, label=label)
  return _ratio(tn, tn + fp)


def _surface(mask: np.ndarray) -> np.ndarray:
  """Foreground pixels with a face-adjacent background (or outside) neighbour."""
  structure = ndimage.generate_binary_structure(mask.ndim, 1)
  return mask & ~ndimage.binary_erosion(mask, structure, border_value=0)


def hd95(pred, target, spacing=None, *, label: int | None = None) -> float:
  """95th percentile of the symmetric surface distances (medpy convention).

  The distances from every surface pixel of `pred` to the surface of
  `target`, and back, are pooled and their 95th percentile is returned, in
  the units of `spacing` (pixels when None). Both empty: 0.0; one empty: nan.
  Works for 2D or 3D masks.
  """
  p, t = _masks(pred, target, label)
  p_any, t_any = p.any(), t.any()
  if not p_any and not t_any:
    return 0.0
  if not p_any or not t_any:
    return math.nan
  # Crop to the union's bounding box plus one pixel: same distances, less work.
  coords = np.nonzero(p | t)
  box = tuple(slice(max(int(c.min()) - 1, 0), int(c.max()) + 2) for c in coords)
  sp, st = _surface(p[box]), _surface(t[box])
  to_t = ndimage.distance_transform_edt(~st, sampling=spacing)
  to_p = ndimage.distance_transform_edt(~sp, sampling=spacing)
  distances = np.concatenate([to_t[sp], to_p[st]])
  return float(np.percentile(distances, 95))


def _match_shapes(a: np.ndarray, b: np.ndarray):
  """Drop a trailing channel of size 1 from whichever array has one extra."""
  if a.ndim == b.ndim + 1 and a.shape[-1] == 1:
    a = a[..., 0]
  elif b.ndim == a.ndim + 1 and b.shape[-1] == 1:
    b = b[..., 0]
  if a.shape != b.shape:
    raise ValueError(f'shapes differ: {a.shape} vs {b.shape}')
  return a, b


def _valid_mask(valid, batch: int) -> np.ndarray:
  if valid is None:
    return np.ones(batch, dtype=bool)
  valid = np.asarray(valid).reshape(-1).astype(bool)
  if valid.shape[0] != batch:
    raise ValueError(f'valid has {valid.shape[0]} entries for a batch of {batch}')
  return valid


def _cat(parts, shape, dtype) -> np.ndarray:
  return np.concatenate(parts) if parts else np.zeros(shape, dtype)


# A slice "has a lesion" when at least this share of it is segmented (~33
# pixels at 128 px: about one small ground-glass focus).
VISIBLE_LESION_AREA = 0.002


class SegmentationAccumulator:
  """Pools lesion-segmentation counts and per-image scores over a split.

  `update` takes integer label maps (B, H, W) (or (B, D, H, W)); the binary
  lesion mask is `label > 0`. With num_classes > 1 each foreground class k
  also gets a pooled Dice, `dice_class_<k>`. `update_normal` takes the
  predictions on slices labelled normal, which have no ground-truth mask but
  no lesion either: their predicted lesion area is a false-positive rate that
  Dice (ground-truth masks only) never sees.
  """

  def __init__(self, num_classes: int = 1, spacing=None):
    self.num_classes = int(num_classes)
    self.spacing = spacing
    self._counts = []        # per image (TP, FP, FN, TN), binary lesion
    self._hd95 = []
    self._class_counts = np.zeros((max(self.num_classes - 1, 0), 3), np.int64)
    self._normal_area = []   # per normal slice, share of it predicted lesion

  def update_normal(self, pred_labels, valid=None):
    pred = np.asarray(pred_labels)
    pred = pred[_valid_mask(valid, pred.shape[0])]
    if pred.shape[0]:
      self._normal_area.append(_foreground(pred).reshape(pred.shape[0], -1).mean(axis=1))

  @property
  def normal_lesion_area(self) -> np.ndarray:
    """(N,) share of each normal slice predicted lesion."""
    return _cat(self._normal_area, (0,), np.float64)

  def update(self, pred_labels, target_labels, valid=None):
    pred, target = _match_shapes(np.asarray(pred_labels), np.asarray(target_labels))
    keep = _valid_mask(valid, pred.shape[0])
    pred, target = pred[keep], target[keep]
    if pred.shape[0] == 0:
      return
    p = _foreground(pred).reshape(pred.shape[0], -1)
    t = _foreground(target).reshape(target.shape[0], -1)
    tp = np.count_nonzero(p & t, axis=1)
    fp = np.count_nonzero(p & ~t, axis=1)
    fn = np.count_nonzero(~p & t, axis=1)
    tn = p.shape[1] - tp - fp - fn
    self._counts.append(np.stack([tp, fp, fn, tn], axis=1).astype(np.int64))
    self._hd95.extend(hd95(pred[i] > 0, target[i] > 0, self.spacing)
                      for i in range(pred.shape[0]))
    for k in range(1, self.num_classes):
      pk, tk = pred == k, target == k
      self._class_counts[k - 1] += (np.count_nonzero(pk & tk),
                                    np.count_nonzero(pk & ~tk),
                                    np.count_nonzero(~pk & tk))

  @property
  def per_image_counts(self) -> np.ndarray:
    """(N, 4) int64: TP, FP, FN, TN per image (for a pooled-Dice bootstrap)."""
    return _cat(self._counts, (0, 4), np.int64)

  @property
  def per_image_dice(self) -> np.ndarray:
    return np.array([dice_from_counts(*c[:3]) for c in self.per_image_counts], float)

  @property
  def per_image_iou(self) -> np.ndarray:
    return np.array([_iou_from(*c[:3]) for c in self.per_image_counts], float)

  @property
  def per_image_hd95(self) -> np.ndarray:
    return np.asarray(self._hd95, dtype=np.float64)

  def result(self) -> dict:
    counts = self.per_image_counts
    n = counts.shape[0]
    nan = math.nan
    out = {'num_seg_examples': int(n)}
    if n:
      tp, fp, fn, tn = (int(v) for v in counts.sum(axis=0))
      hd = self.per_image_hd95
      finite = hd[np.isfinite(hd)]
      out.update(
          dice=dice_from_counts(tp, fp, fn), iou=_iou_from(tp, fp, fn),
          sensitivity=_ratio(tp, tp + fn), specificity=_ratio(tn, tn + fp),
          dice_per_image_mean=float(self.per_image_dice.mean()),
          iou_per_image_mean=float(self.per_image_iou.mean()),
          hd95=float(finite.mean()) if finite.size else nan,
          hd95_num_skipped=int(hd.size - finite.size))
    else:
      out.update(dice=nan, iou=nan, sensitivity=nan, specificity=nan,
                 dice_per_image_mean=nan, iou_per_image_mean=nan, hd95=nan,
                 hd95_num_skipped=0)
    for k in range(1, self.num_classes):
      out[f'dice_class_{k}'] = (dice_from_counts(*self._class_counts[k - 1]) if n
                                else nan)
    area = self.normal_lesion_area
    out.update(num_normal_slices=int(area.size),
               normal_lesion_area=float(area.mean()) if area.size else nan,
               normal_with_lesion=(float(np.mean(area >= VISIBLE_LESION_AREA)) if area.size
                                   else nan))
    return out


# --------------------------------------------------------------- classification
def roc_auc(scores, positives) -> float:
  """Binary ROC AUC by the Mann-Whitney U statistic, ties at half credit.

  Equals P(score of a random positive > score of a random negative) with
  ties counted 1/2; nan when only one class is present.
  """
  scores = np.asarray(scores, dtype=np.float64).reshape(-1)
  pos = np.asarray(positives).reshape(-1).astype(bool)
  if scores.shape != pos.shape:
    raise ValueError(f'{scores.shape[0]} scores for {pos.shape[0]} labels')
  if not np.all(np.isfinite(scores)):
    raise ValueError('roc_auc: scores must be finite')
  n_pos = int(pos.sum())
  n_neg = pos.size - n_pos
  if n_pos == 0 or n_neg == 0:
    return math.nan
  # Imported here: scipy.stats cost ~2.5 s (2 cores under load) of every command's start.
  from scipy import stats  # pylint: disable=g-import-not-at-top
  ranks = stats.rankdata(scores)  # average ranks for ties
  u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
  return float(u / (n_pos * n_neg))


def _to_str(s) -> str:
  return s.decode('utf-8') if isinstance(s, (bytes, np.bytes_)) else str(s)


class ClassificationAccumulator:
  """Pools class probabilities and labels over a split.

  labels: exact class, or -1 when only a label *set* is known (skipped for
  exact-class metrics). covid_positive (optional, per example): 1 COVID,
  0 not COVID, -1 unknown; where it is -1 or not given, it is derived from an
  exact label (label `features.COVID`). `auc_covid` uses every example whose
  COVID-vs-rest answer is known, so set-labelled examples count there.
  `auc_macro` averages the one-vs-rest AUCs of the classes that have both
  positives and negatives among the exact labels (named in
  `auc_macro_classes`); scikit-learn would return nan when a class is absent.
  """

  def __init__(self, num_classes: int, class_names: Sequence[str]):
    if len(class_names) != num_classes:
      raise ValueError(f'{len(class_names)} class names for {num_classes} classes')
    self.num_classes = int(num_classes)
    self.class_names = [str(c) for c in class_names]
    self._probs, self._labels, self._covid, self._sources = [], [], [], []
    self._has_sources = False

  def update(self, probs, labels, valid=None, sources=None, covid_positive=None):
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if probs.ndim != 2 or probs.shape != (labels.shape[0], self.num_classes):
      raise ValueError(f'probs {probs.shape} for {labels.shape[0]} labels and '
                       f'{self.num_classes} classes')
    keep = _valid_mask(valid, labels.shape[0])
    covid = np.where(labels < 0, -1, (labels == COVID).astype(np.int64))
    if covid_positive is not None:
      given = np.asarray(covid_positive).reshape(-1).astype(np.int64)
      covid = np.where(given >= 0, given, covid)
    self._probs.append(probs[keep])
    self._labels.append(labels[keep])
    self._covid.append(covid[keep])
    src = ['unknown'] * labels.shape[0]
    if sources is not None:
      self._has_sources = True
      src = [_to_str(s) for s in np.asarray(sources).reshape(-1)]
      if len(src) != labels.shape[0]:
        raise ValueError(f'{len(src)} sources for {labels.shape[0]} labels')
    self._sources.extend(s for s, k in zip(src, keep) if k)

  @property
  def probs(self) -> np.ndarray:
    return _cat(self._probs, (0, self.num_classes), np.float64)

  @property
  def labels(self) -> np.ndarray:
    return _cat(self._labels, (0,), np.int64)

  @property
  def covid_known(self) -> tuple[np.ndarray, np.ndarray]:
    """(scores = probs[:, COVID], positives) over examples whose COVID status is known."""
    covid = _cat(self._covid, (0,), np.int64)
    known = covid >= 0
    return self.probs[known, COVID], covid[known] == 1

  def result(self) -> dict:
    probs, labels = self.probs, self.labels
    exact = labels >= 0
    p_ex, y_ex = probs[exact], labels[exact]
    pred = np.argmax(p_ex, axis=-1) if p_ex.size else np.zeros(0, np.int64)
    c = self.num_classes
    cm = np.zeros((c, c), np.int64)
    np.add.at(cm, (y_ex, pred), 1)
    scores, positives = self.covid_known
    out = {
        'num_cls_examples': int(labels.shape[0]),
        'num_cls_exact': int(exact.sum()),
        'num_auc_covid_examples': int(scores.shape[0]),
        'accuracy': _ratio(int(np.trace(cm)), int(cm.sum())),
        'confusion_matrix': cm.tolist(),
        'auc_covid': roc_auc(scores, positives),
    }
    aucs = []
    for k, name in enumerate(self.class_names):
      tp = int(cm[k, k])
      fn = int(cm[k].sum()) - tp
      fp = int(cm[:, k].sum()) - tp
      tn = int(cm.sum()) - tp - fn - fp
      out[f'sensitivity_{name}'] = _ratio(tp, tp + fn)
      out[f'specificity_{name}'] = _ratio(tn, tn + fp)
      aucs.append((name, roc_auc(p_ex[:, k], y_ex == k)))
    # Deliberately not scikit-learn's rule (nan when a class is absent): a
    # validation split of one source often lacks a class, and nan would hide
    # the classes that can be scored. `auc_macro_classes` says which were.
    scored = [(name, a) for name, a in aucs if not math.isnan(a)]
    out['auc_macro'] = float(np.mean([a for _, a in scored])) if scored else math.nan
    out['auc_macro_classes'] = [name for name, _ in scored]
    if self._has_sources:
      src = np.asarray(self._sources, dtype=object)[exact]
      correct = pred == y_ex
      out['accuracy_by_source'] = {
          s: float(correct[src == s].mean()) for s in sorted(set(src.tolist()))}
    return out


# --------------------------------------------------------------- reconstruction
class ReconstructionAccumulator:
  """Per-example MSE and PSNR (data range 1.0, capped at 100 dB), averaged."""

  def __init__(self):
    self._mse = []

  def update(self, recon, image, valid=None):
    recon, image = _match_shapes(np.asarray(recon, np.float64),
                                 np.asarray(image, np.float64))
    keep = _valid_mask(valid, recon.shape[0])
    diff = recon[keep] - image[keep]
    self._mse.append(np.mean(diff ** 2, axis=tuple(range(1, diff.ndim))))

  @property
  def per_example_mse(self) -> np.ndarray:
    return _cat(self._mse, (0,), np.float64)

  def result(self) -> dict:
    mse = self.per_example_mse
    if mse.size == 0:
      return {'recon_mse': math.nan, 'recon_psnr': math.nan,
              'num_recon_examples': 0}
    with np.errstate(divide='ignore'):
      psnr = np.minimum(10.0 * np.log10(1.0 / mse), PSNR_CAP_DB)
    return {'recon_mse': float(mse.mean()), 'recon_psnr': float(psnr.mean()),
            'num_recon_examples': int(mse.size)}
