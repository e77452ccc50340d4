"""The lesion-threshold sweep in every evaluation, and the nested choice across folds."""

import numpy as np
import pytest

from mtl_jax import lesion_threshold, metrics, tasks

GRID = lesion_threshold.GRID
# normal without a mask, COVID with a mask, COVID with a mask, normal with a mask
LABEL_SETS = np.array([[0, 1, 0], [1, 0, 0], [1, 0, 0], [0, 1, 0]], np.uint8)


def _batch(size=16):
  mask = np.zeros((4, size, size), np.int32)
  mask[1, 2:10, 3:12] = 1
  mask[2, 8:14, 1:6] = 1
  return {'mask': mask, 'has_mask': np.array([0, 1, 1, 1], np.float32),
          'label_set': LABEL_SETS, 'has_label': np.ones(4, np.float32),
          'valid': np.array([1, 1, 1, 0], np.float32)}  # the last row is padding


def test_the_sweep_counts_each_threshold_as_the_labels_would(tiny_config):
  rng = np.random.default_rng(0)
  batch = _batch()
  prob = np.clip(0.35 * batch['mask'] + rng.uniform(0, 0.7, batch['mask'].shape), 0, 1)
  task = tasks.SegmentationTask(tiny_config)
  acc = task.accumulator()
  labels = (prob > lesion_threshold.LESION_THRESHOLD).astype(np.int32)
  task.update(acc, {'seg_labels': labels, 'seg_prob': prob.astype(np.float32)}, batch)
  result = acc.result()
  sweep = result['threshold_sweep']
  assert sweep['thresholds'] == list(GRID)
  assert sweep['num_seg_examples'] == 2 and sweep['num_normal_slices'] == 1
  for i, t in enumerate(GRID):  # only the two valid masked slices count
    expected = metrics.binary_counts(prob[1:3] > t, batch['mask'][1:3] > 0)[:3]
    assert sweep['counts'][i] == [int(v) for v in expected], t
    assert sweep['normal_lesion_area'][i] == pytest.approx(float((prob[0] > t).mean()))
  # At the threshold the labels use, the sweep is the reported Dice and area.
  at = GRID.index(lesion_threshold.LESION_THRESHOLD)
  assert sweep['dice'][at] == pytest.approx(result['dice'])
  assert sweep['normal_lesion_area'][at] == pytest.approx(result['normal_lesion_area'])
  assert sweep['dice'][0] != sweep['dice'][-1]
  # Without probabilities (a caller with labels only) there is no sweep.
  plain = task.accumulator()
  task.update(plain, {'seg_labels': labels}, batch)
  assert 'threshold_sweep' not in plain.result()


def test_a_multi_class_model_has_no_sweep(tiny_config):
  tiny_config.model.num_seg_classes = 3
  task = tasks.SegmentationTask(tiny_config)
  acc = task.accumulator()
  batch = _batch()
  labels = batch['mask']  # a perfect prediction, with its probabilities
  probs = np.eye(3, dtype=np.float32)[labels]
  task.update(acc, {'seg_labels': labels, 'seg_prob': 1.0 - probs[..., 0]}, batch)
  result = acc.result()
  assert result['dice'] == pytest.approx(1.0) and 'threshold_sweep' not in result


def _counts_peaking_at(threshold, scale=1000):
  """(len(GRID), 3) counts whose pooled Dice is highest at `threshold`."""
  rows = []
  for t in GRID:
    miss = int(scale * (0.2 + abs(t - threshold)))
    rows.append([scale, miss, miss])
  return np.array(rows)


def test_each_fold_is_thresholded_by_the_other_folds_only():
  folds = {0: _counts_peaking_at(0.3), 1: _counts_peaking_at(0.3), 2: _counts_peaking_at(0.3)}
  out = lesion_threshold.nested_choice(folds)
  assert [f['threshold'] for f in out['folds'].values()] == [0.3, 0.3, 0.3]
  assert out['adopted_threshold'] == 0.3
  assert out['pooled_dice_nested'] > out['pooled_dice_at_default']
  # A fold that outweighs the others moves their choice, never its own.
  folds[2] = _counts_peaking_at(0.8, scale=100_000)
  out = lesion_threshold.nested_choice(folds)
  assert [out['folds'][k]['threshold'] for k in (0, 1, 2)] == [0.8, 0.8, 0.3]
  assert out['adopted_threshold'] == 0.8
  with pytest.raises(ValueError, match='at least 2 folds'):
    lesion_threshold.nested_choice({0: folds[0]})


def test_flat_dice_keeps_the_default_threshold():
  flat = np.tile([[10, 2, 2]], (len(GRID), 1))
  assert lesion_threshold.best_threshold(flat) == lesion_threshold.LESION_THRESHOLD
