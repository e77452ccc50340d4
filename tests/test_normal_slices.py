"""Slices labelled normal are lesion-free: their own loss term and false-lesion metric, never Dice."""

import jax
import jax.numpy as jnp
import numpy as np

from mtl_jax import metrics, tasks
from mtl_jax.data import features

# normal without a mask, UCSD's {normal, other}, COVID, "other", normal with a mask
LABEL_SETS = np.array([[0, 1, 0], [0, 1, 1], [1, 0, 0], [0, 0, 1], [0, 1, 0]], np.uint8)
HAS_MASK = np.array([0, 0, 0, 0, 1], np.float32)


def _batch(size=8):
  n = len(LABEL_SETS)
  return {'mask': jnp.zeros((n, size, size), jnp.int32), 'has_mask': jnp.asarray(HAS_MASK),
          'label_set': jnp.asarray(LABEL_SETS), 'has_label': jnp.ones(n),
          'valid': jnp.ones(n), 'soft_mask': jnp.zeros((n, size, size)),
          'has_soft_mask': jnp.zeros(n)}


def test_only_slices_labelled_exactly_normal_are_pushed_to_background(tiny_config):
  assert features.is_normal(LABEL_SETS).tolist() == [True, False, False, False, True]
  tiny_config.loss.normal_no_lesion_weight = 2.0
  task = tasks.SegmentationTask(tiny_config)
  logits = jnp.full((len(LABEL_SETS), 8, 8, 1), 3.0)  # lesion everywhere

  def normal_term(z):
    return task.loss({'seg_logits': z}, _batch())[1]['normal_ce']

  assert float(normal_term(logits)) > 3.0  # -log(1 - sigmoid(3))
  assert float(normal_term(-logits)) < 0.05
  grad = jax.grad(normal_term)(logits)
  # Only the first slice (normal, no mask) gets a gradient from the term.
  assert float(jnp.abs(grad[0]).sum()) > 0
  assert float(jnp.abs(grad[1:]).sum()) == 0
  total, terms = task.loss({'seg_logits': logits}, _batch())
  assert float(total) == float(terms['dice_loss'] + tiny_config.loss.seg_ce_weight
                               * terms['seg_ce'] + 2.0 * terms['normal_ce'])
  tiny_config.loss.normal_no_lesion_weight = 0.0
  assert 'normal_ce' not in tasks.SegmentationTask(tiny_config).loss(
      {'seg_logits': logits}, _batch())[1]


def test_false_lesions_on_normal_slices_are_reported_and_never_count_in_dice(tiny_config):
  task = tasks.SegmentationTask(tiny_config)
  acc = task.accumulator()
  batch = {k: np.asarray(v) for k, v in _batch().items()}
  labels = np.zeros((len(LABEL_SETS), 8, 8), np.int32)
  labels[0, :4] = 1   # half of the normal slice called lesion
  labels[1:4] = 1     # the other classes: not scored as normal
  task.update(acc, {'seg_labels': labels}, batch)
  result = acc.result()
  assert result['num_normal_slices'] == 1
  assert result['normal_lesion_area'] == 0.5 and result['normal_with_lesion'] == 1.0
  assert result['num_seg_examples'] == 1  # the one ground-truth (empty) mask
  empty = metrics.SegmentationAccumulator().result()
  assert empty['num_normal_slices'] == 0 and np.isnan(empty['normal_lesion_area'])
  # A single stray pixel at 128 px is below the visible-lesion area.
  tiny = metrics.SegmentationAccumulator()
  one = np.zeros((1, 128, 128), np.int32)
  one[0, 0, 0] = 1
  tiny.update_normal(one)
  assert tiny.result()['normal_with_lesion'] == 0.0


def test_a_teachers_soft_mask_never_overrules_the_normal_label(tiny_config):
  tiny_config.loss.pseudo_weight = 1.0
  batch = dict(_batch(), soft_mask=jnp.ones((len(LABEL_SETS), 8, 8)),
               has_soft_mask=jnp.ones(len(LABEL_SETS)))
  logits = jnp.zeros((len(LABEL_SETS), 8, 8, 1))

  def pseudo_term(z, normal_weight):
    tiny_config.loss.normal_no_lesion_weight = normal_weight
    return tasks.SegmentationTask(tiny_config).loss({'seg_logits': z}, batch)[1]['pseudo_loss']

  # Without the normal term a soft mask teaches every unmasked slice; with it,
  # not the one labelled normal.
  assert float(jnp.abs(jax.grad(pseudo_term)(logits, 0.0)[0]).sum()) > 0
  with_normal = jax.grad(pseudo_term)(logits, 1.0)
  assert float(jnp.abs(with_normal[0]).sum()) == 0
  assert float(jnp.abs(with_normal[1:4]).sum()) > 0
