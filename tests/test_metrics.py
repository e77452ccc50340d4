"""metrics.py against hand-computed cases (numpy only, runs in seconds)."""

import itertools
import json
import math

import numpy as np
import pytest

from mtl_jax import jsonio, metrics, metrics_summary

NAMES = ['covid', 'normal', 'other']


# ----------------------------------------------------------------- segmentation
def test_dice_iou_known_overlap():
  pred = np.array([1, 1, 1, 0, 0], bool)
  target = np.array([0, 1, 1, 1, 0], bool)  # 2 px overlap of 3 and 3
  assert metrics.dice(pred, target) == pytest.approx(2 * 2 / 6)
  assert metrics.iou(pred, target) == pytest.approx(2 / 4)
  assert metrics.sensitivity(pred, target) == pytest.approx(2 / 3)
  assert metrics.specificity(pred, target) == pytest.approx(1 / 2)


def test_empty_conventions():
  empty, some = np.zeros((4, 4), bool), np.eye(4, dtype=bool)
  assert metrics.dice(empty, empty) == 1.0
  assert metrics.iou(empty, empty) == 1.0
  assert metrics.dice(empty, some) == 0.0
  assert math.isnan(metrics.sensitivity(some, empty))  # no positives
  assert metrics.specificity(some, empty) == pytest.approx(12 / 16)
  assert math.isnan(metrics.specificity(some, np.ones((4, 4), bool)))
  assert metrics.hd95(empty, empty) == 0.0
  assert math.isnan(metrics.hd95(empty, some))
  assert math.isnan(metrics.hd95(some, empty))


def test_label_keyword_selects_a_class():
  pred = np.array([[0, 1, 2, 2]])
  target = np.array([[0, 2, 2, 1]])
  assert metrics.dice(pred, target) == pytest.approx(1.0)  # label > 0
  assert metrics.dice(pred, target, label=2) == pytest.approx(2 * 1 / (2 + 2))
  assert metrics.dice(pred, target, label=1) == 0.0


def _square(shape, top, left, side):
  m = np.zeros(shape, bool)
  m[top:top + side, left:left + side] = True
  return m


def test_hd95_shifted_squares_give_the_shift():
  # A translation by s moves the leading edge exactly s; >5% of the surface
  # distances equal s and none exceed it, so the 95th percentile is s.
  a = _square((20, 20), 5, 3, 6)
  b = _square((20, 20), 5, 5, 6)       # shifted 2 px along columns
  assert metrics.hd95(a, b) == pytest.approx(2.0)
  assert metrics.hd95(b, a) == pytest.approx(2.0)
  assert metrics.hd95(a, b, spacing=(1.0, 0.5)) == pytest.approx(1.0)
  c = _square((20, 20), 8, 3, 6)       # shifted 3 px along rows
  assert metrics.hd95(a, c) == pytest.approx(3.0)
  assert metrics.hd95(a, c, spacing=(2.0, 1.0)) == pytest.approx(6.0)
  assert metrics.hd95(a, a) == 0.0


def test_hd95_single_pixels_and_3d():
  a, b = np.zeros((10, 10), bool), np.zeros((10, 10), bool)
  a[1, 1], b[4, 5] = True, True
  assert metrics.hd95(a, b) == pytest.approx(5.0)
  cube_a = np.zeros((12, 12, 12), bool)
  cube_a[2:7, 2:7, 2:7] = True
  cube_b = np.roll(cube_a, 2, axis=0)
  assert metrics.hd95(cube_a, cube_b) == pytest.approx(2.0)
  assert metrics.hd95(cube_a, cube_b, spacing=(3.0, 1.0, 1.0)) == pytest.approx(6.0)


def _brute_hd95(a, b):
  """Independent reference: explicit 4-neighbour surfaces, all pairwise distances."""
  def surface(m):
    pts = []
    for r, c in zip(*np.nonzero(m)):
      nbrs = [(r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)]
      if any(not (0 <= y < m.shape[0] and 0 <= x < m.shape[1]) or not m[y, x]
             for y, x in nbrs):
        pts.append((r, c))
    return np.array(pts, float)
  sa, sb = surface(a), surface(b)
  d = np.sqrt(((sa[:, None, :] - sb[None, :, :]) ** 2).sum(-1))
  return np.percentile(np.concatenate([d.min(1), d.min(0)]), 95)


def test_hd95_matches_brute_force_on_irregular_shapes():
  yy, xx = np.mgrid[:24, :24]
  a = (yy - 10) ** 2 + (xx - 9) ** 2 <= 36           # disc
  b = (np.abs(yy - 13) + np.abs(xx - 12) <= 7) | (yy < 2)  # diamond + edge band
  assert metrics.hd95(a, b) == pytest.approx(_brute_hd95(a, b))


def test_pooled_vs_per_image_dice_differ():
  # Pooled Dice sums TP/FP/FN over all pixels of the split (a big lesion
  # dominates); per-image Dice averages one Dice per image (equal weights).
  target = np.zeros((2, 16, 16), np.int32)
  pred = np.zeros((2, 16, 16), np.int32)
  target[0, 3:13, 3:13] = 1          # 100 px lesion, found exactly
  pred[0, 3:13, 3:13] = 1
  target[1, 0, 0] = 1                # 1 px lesion, missed; 1 px false positive
  pred[1, 9, 9] = 1
  acc = metrics.SegmentationAccumulator(1)
  acc.update(pred, target)
  r = acc.result()
  assert r['dice'] == pytest.approx(2 * 100 / (200 + 2))
  assert r['dice_per_image_mean'] == pytest.approx(0.5)
  assert r['iou'] == pytest.approx(100 / 102)
  assert r['iou_per_image_mean'] == pytest.approx(0.5)
  np.testing.assert_allclose(acc.per_image_dice, [1.0, 0.0])
  assert r['sensitivity'] == pytest.approx(100 / 101)
  assert r['specificity'] == pytest.approx((512 - 102) / (512 - 101))


def test_segmentation_accumulator_valid_hd95_skips_and_classes():
  target = np.zeros((4, 20, 20), np.int32)
  pred = np.zeros((4, 20, 20), np.int32)
  target[0, 5:11, 3:9] = 1
  pred[0, 5:11, 5:11] = 2            # shift 2 -> hd95 2; wrong class
  target[1, 2:4, 2:4] = 2            # prediction empty -> hd95 nan, skipped
  # example 2: both empty -> dice 1, hd95 0
  target[3] = 1                      # invalid: must not count
  acc = metrics.SegmentationAccumulator(3)
  acc.update(pred[:2], target[:2], valid=np.array([True, True]))
  acc.update(pred[2:], target[2:], valid=np.array([1, 0]))
  r = acc.result()
  assert r['num_seg_examples'] == 3
  assert r['hd95_num_skipped'] == 1
  assert r['hd95'] == pytest.approx((2.0 + 0.0) / 2)
  # binary lesion: example 0 overlaps 24 of 36 and 36; example 1 misses 4 px
  assert r['dice'] == pytest.approx(2 * 24 / (36 + 36 + 4))
  assert r['dice_per_image_mean'] == pytest.approx((48 / 72 + 0.0 + 1.0) / 3)
  assert r['dice_class_1'] == 0.0    # class 1 never predicted
  assert r['dice_class_2'] == 0.0    # class 2 predicted where target is 1
  assert set(r) >= {'iou', 'sensitivity', 'specificity', 'iou_per_image_mean'}
  assert all(isinstance(v, (int, float)) for v in r.values())


def test_segmentation_accumulator_accepts_trailing_channel_and_empty():
  acc = metrics.SegmentationAccumulator(1)
  r = acc.result()
  assert r['num_seg_examples'] == 0 and math.isnan(r['dice'])
  m = np.zeros((1, 8, 8), np.int32)
  m[0, 2:5, 2:5] = 1
  acc.update(m, m[..., None])
  assert acc.result()['dice'] == 1.0


# --------------------------------------------------------------- classification
def test_roc_auc_hand_cases():
  assert metrics.roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
  assert metrics.roc_auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
  assert metrics.roc_auc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
  # ties: pos {0.5, 0.9} vs neg {0.5, 0.2}: (0.5 + 1 + 1 + 1) / 4
  assert metrics.roc_auc([0.5, 0.5, 0.2, 0.9], [1, 0, 0, 1]) == pytest.approx(0.875)
  assert metrics.roc_auc([0.3, 0.3, 0.3], [1, 0, 1]) == pytest.approx(0.5)
  assert math.isnan(metrics.roc_auc([0.1, 0.2], [1, 1]))


def test_roc_auc_matches_pair_counting():
  rng = np.random.default_rng(1)
  s = rng.integers(0, 5, 40) / 4.0      # many ties
  y = rng.integers(0, 2, 40).astype(bool)
  pairs = [1.0 if a > b else 0.5 if a == b else 0.0
           for a, b in itertools.product(s[y], s[~y])]
  assert metrics.roc_auc(s, y) == pytest.approx(np.mean(pairs))


def _cls_batch():
  probs = np.array([[0.7, 0.2, 0.1],    # true 0, pred 0
                    [0.3, 0.6, 0.1],    # true 0, pred 1
                    [0.1, 0.8, 0.1],    # true 1, pred 1
                    [0.2, 0.2, 0.6],    # true 2, pred 2
                    [0.5, 0.1, 0.4],    # true 2, pred 0
                    [0.1, 0.5, 0.4],    # set label {normal, other}: not COVID
                    [0.9, 0.05, 0.05]])  # invalid (padding)
  labels = np.array([0, 0, 1, 2, 2, -1, 1])
  valid = np.array([1, 1, 1, 1, 1, 1, 0], bool)
  sources = np.array(['a', 'a', 'b', 'b', 'b', 'a', 'b'])
  return probs, labels, valid, sources


def test_classification_hand_case():
  probs, labels, valid, sources = _cls_batch()
  # -1 defers to the exact label; only the set-labelled example needs it.
  covid = np.array([-1, -1, -1, -1, -1, 0, -1])
  acc = metrics.ClassificationAccumulator(3, NAMES)
  acc.update(probs[:3], labels[:3], valid[:3], sources[:3], covid[:3])
  acc.update(probs[3:], labels[3:], valid[3:], list(sources[3:]), covid[3:])
  r = acc.result()
  assert r['confusion_matrix'] == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
  assert r['accuracy'] == pytest.approx(3 / 5)
  assert r['sensitivity_covid'] == pytest.approx(1 / 2)
  assert r['specificity_covid'] == pytest.approx(2 / 3)
  assert r['sensitivity_normal'] == 1.0
  assert r['specificity_normal'] == pytest.approx(3 / 4)
  assert r['sensitivity_other'] == pytest.approx(1 / 2)
  assert r['specificity_other'] == 1.0
  assert r['accuracy_by_source'] == pytest.approx({'a': 0.5, 'b': 2 / 3})
  # COVID scores: pos {0.7, 0.3} vs neg {0.1, 0.2, 0.5, 0.1 (set label)}
  assert r['auc_covid'] == pytest.approx(7 / 8)
  # one-vs-rest over exact labels: covid 5/6, normal 1, other 1
  assert r['auc_macro'] == pytest.approx((5 / 6 + 1 + 1) / 3)
  assert r['auc_macro_classes'] == ['covid', 'normal', 'other']
  assert (r['num_cls_examples'], r['num_cls_exact'],
          r['num_auc_covid_examples']) == (6, 5, 6)


def test_auc_macro_averages_the_classes_present_and_names_them():
  acc = metrics.ClassificationAccumulator(3, ['covid', 'normal', 'other'])
  # No 'other' example: its one-vs-rest AUC is undefined (scikit-learn: nan).
  acc.update(np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]]),
             np.array([0, 1, 1]))
  r = acc.result()
  assert r['auc_macro_classes'] == ['covid', 'normal']
  assert r['auc_macro'] == pytest.approx((1.0 + 1.0) / 2)


def test_classification_without_covid_positive_or_sources():
  probs, labels, valid, _ = _cls_batch()
  acc = metrics.ClassificationAccumulator(3, NAMES)
  acc.update(probs, labels, valid)
  r = acc.result()
  assert r['auc_covid'] == pytest.approx(5 / 6)  # set-labelled example unknown
  assert 'accuracy_by_source' not in r
  assert r['accuracy'] == pytest.approx(3 / 5)


# --------------------------------------------------------------- reconstruction
def test_reconstruction_mse_psnr():
  image = np.full((3, 4, 4, 1), 0.5)
  recon = image.copy()
  recon[0] += 0.1            # mse 0.01 -> 20 dB
  recon[2] = 0.0             # invalid, ignored
  acc = metrics.ReconstructionAccumulator()
  acc.update(recon, image[..., 0], valid=np.array([1, 1, 0]))
  r = acc.result()
  assert r['recon_mse'] == pytest.approx(0.005)
  assert r['recon_psnr'] == pytest.approx((20.0 + 100.0) / 2)  # exact: capped
  assert r['num_recon_examples'] == 2


# -------------------------------------------------------------------- bootstrap
def test_bootstrap_ci_contains_estimate_and_is_deterministic():
  rng = np.random.default_rng(0)
  d = rng.uniform(0.4, 0.9, 50)
  ci = metrics_summary.bootstrap_dice_ci(d, num_resamples=300, seed=3)
  assert ci == metrics_summary.bootstrap_dice_ci(d, num_resamples=300, seed=3)
  assert ci != metrics_summary.bootstrap_dice_ci(d, num_resamples=300, seed=4)
  assert ci[0] < d.mean() < ci[1]
  assert metrics_summary.bootstrap_ci(lambda i: 0.7, 10, num_resamples=20) == (0.7, 0.7)


def test_bootstrap_auc_ci_skips_one_class_resamples():
  s = np.array([0.9, 0.2, 0.8, 0.3, 0.6, 0.4, 0.7, 0.1])
  y = np.array([1, 0, 1, 0, 0, 1, 1, 0])
  low, high = metrics_summary.bootstrap_auc_ci(s, y, num_resamples=300)
  assert low <= metrics.roc_auc(s, y) <= high
  assert all(map(math.isnan, metrics_summary.bootstrap_auc_ci([0.1, 0.2], [1, 1],
                                                      num_resamples=10)))


# -------------------------------------------------------------------- summarize
def test_summarize_is_strict_json():
  seg = metrics.SegmentationAccumulator(1)
  t = np.zeros((3, 8, 8), np.int32)
  t[:, 2:6, 2:6] = 1
  p = np.roll(t, 1, axis=2)
  p[2] = 0                                   # one hd95 nan
  seg.update(p, t)
  cls = metrics.ClassificationAccumulator(3, NAMES)
  probs, labels, valid, sources = _cls_batch()
  cls.update(probs, labels, valid, sources)
  rec = metrics.ReconstructionAccumulator()
  rec.update(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)))
  out = metrics_summary.summarize(seg, cls, rec, num_resamples=100)
  json.dumps(out, allow_nan=False)
  assert out['num_examples'] == 6
  assert out['dice_ci95'][0] <= out['dice'] <= out['dice_ci95'][1]
  assert len(out['auc_covid_ci95']) == 2
  assert len(out['dice_per_image_mean_ci95']) == 2
  assert out['hd95_num_skipped'] == 1 and out['hd95'] == pytest.approx(1.0)

  only_seg = metrics_summary.summarize(metrics.SegmentationAccumulator(1), None, None)
  json.dumps(only_seg, allow_nan=False)
  assert only_seg['dice'] is None and only_seg['num_examples'] == 0
  assert 'dice_ci95' not in only_seg
  assert 'dice_ci95' not in metrics_summary.summarize(seg, bootstrap=False)


def test_write_json_is_strict_and_atomic(tmp_path):
  path = tmp_path / 'out.json'
  path.write_text('{"old": true}\n')
  jsonio.write_json(path, {'a': np.float32(0.5), 'b': float('nan'), 'c': np.arange(2),
                           'd': (np.int64(3), float('inf'))})
  assert json.loads(path.read_text()) == {'a': 0.5, 'b': None, 'c': [0, 1], 'd': [3, None]}
  with pytest.raises(TypeError):  # not serialisable: the old file stays whole
    jsonio.write_json(path, {'x': object()})
  assert json.loads(path.read_text())['a'] == 0.5
  assert [p.name for p in tmp_path.iterdir()] == ['out.json']  # no temporary left
