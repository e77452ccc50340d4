"""Pseudo labels (model-made soft masks): their own feature, loss and weight; never a metric."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax import losses, parallel, tasks, train
from mtl_jax.data import augment, pipeline, synthetic
from mtl_jax.tfds_builders import registry
from test_builders import _save


def test_uncertain_pixels_are_ignored_and_confident_ones_learnt():
  soft = jnp.array([[[0.9, 0.5], [0.1, 0.6]]])  # lesion, unsure, background, unsure
  weight = jnp.ones(1)
  agree = jnp.array([[[[4.0], [0.0]], [[-4.0], [0.0]]]])
  disagree = -agree
  assert losses.pseudo_label_loss(agree, soft, weight) < 0.1
  assert losses.pseudo_label_loss(disagree, soft, weight) > 1.0
  # The unsure pixels (0.5, 0.6) carry no gradient.
  grad = jax.grad(lambda z: losses.pseudo_label_loss(z, soft, weight))(agree)
  assert grad[0, 0, 1, 0] == 0 and grad[0, 1, 1, 0] == 0 and grad[0, 0, 0, 0] != 0
  # No example with a soft mask: 0, with zero gradient.
  assert losses.pseudo_label_loss(agree, soft, jnp.zeros(1)) == 0
  # Multi-class models score lesion as "not background".
  three = jnp.concatenate([-agree, agree, agree], axis=-1)
  assert losses.pseudo_label_loss(three, soft, weight) < 0.1


def test_pseudo_labels_never_count_in_dice(tiny_config):
  task = tasks.SegmentationTask(tiny_config)
  acc = task.accumulator()
  ones = np.ones((2, 8, 8), np.int32)
  batch = {'mask': np.zeros((2, 8, 8), np.int32), 'has_mask': np.zeros(2, np.float32),
           'soft_mask': np.ones((2, 8, 8), np.float32),
           'has_soft_mask': np.ones(2, np.float32), 'valid': np.ones(2, np.float32)}
  task.update(acc, {'seg_labels': ones}, batch)
  assert acc.result()['num_seg_examples'] == 0


def test_augmentation_moves_the_soft_mask_with_the_image():
  example = {'image': np.zeros((32, 32), np.float32), 'mask': np.zeros((32, 32), np.int32),
             'soft_mask': np.zeros((32, 32), np.float32)}
  example['image'][4:10, 2:8] = 1.0
  example['soft_mask'][4:10, 2:8] = 0.8
  out = augment.Augmenter(flip_prob=1.0, rotate_deg=10.0, scale_range=(0.9, 1.1))(example, np.random.default_rng(0))
  assert np.corrcoef(out['image'].ravel(), out['soft_mask'].ravel())[0, 1] > 0.99
  assert out['soft_mask'].max() <= 0.8 + 1e-6


def test_pseudo_masks_train_through_their_own_term(tiny_config, tmp_path):
  rng = np.random.default_rng(0)
  root = tmp_path / 'pseudo'
  for v in range(5):
    for k in range(4):
      hu, lesion = synthetic.generate_slice(rng, 'covid19', 64)
      gray = np.round(np.clip((hu + 1000) / 1400, 0, 1) * 255)
      _save(f'{root}/images/Data-1_case_org_00{v}_{k}.jpg', gray)
      _save(f'{root}/pseudo_masks/Data-1_case_org_00{v}_{k}.png', (lesion > 0) * 230)
  registry.build_dataset('covid19_ct_seg', tiny_config.data.data_dir, 64,
                         manual_dir=str(root), use_pseudo_masks=True)
  tiny_config.data.sources = {'covid19_ct_seg': 1.0}
  tiny_config.data.eval_sources = ('covid19_ct_seg',)
  tiny_config.loss.pseudo_weight = 0.5
  batch = pipeline.train_dataset(tiny_config)[0]
  assert batch['has_soft_mask'].all() and not batch['has_mask'].any()
  trainer = train.Trainer(tiny_config)
  state = trainer.init(jax.random.key(0))
  _, terms = trainer.train_step(state, parallel.global_batch(batch, trainer.mesh))
  assert 0 < float(terms['pseudo_loss']) < 10
  assert float(terms['dice_loss']) == 0.0  # no ground-truth mask in the batch
  results = trainer.evaluate(trainer.init(jax.random.key(0)), 'validation')
  assert results['num_seg_examples'] == 0 and results['dice'] is None


@pytest.fixture
def tiny_config(tiny_config, tmp_path):
  """The shared tiny config on a private copy of the data folder (builds go here)."""
  import shutil  # pylint: disable=g-import-not-at-top
  data_dir = tmp_path / 'data'
  shutil.copytree(tiny_config.data.data_dir, data_dir)
  tiny_config.data.data_dir = str(data_dir)
  return tiny_config
