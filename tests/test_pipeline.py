"""Input pipeline: weighted mixing, per-process shards, augmentation, eval padding."""

import ml_collections
import numpy as np
import pytest

from mtl_jax.data import augment, datasets, pipeline


class _FakeSource:
  """An in-memory split whose examples say which source they came from."""

  def __init__(self, tag: int, n: int, size: int = 16):
    self.tag, self.n, self.size = tag, n, size

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    image = np.full((self.size, self.size), i / self.n, np.float32)
    return {'image': image, 'mask': np.zeros((self.size, self.size), np.int32),
            'has_mask': np.float32(self.tag == 0),
            'label': np.int32(self.tag), 'label_set': np.eye(3, dtype=np.float32)[self.tag],
            'has_label': np.float32(1), 'patient_id': f'{self.tag}-{i}',
            'source': f'src{self.tag}', 'spacing': np.zeros(2, np.float32)}


def _config(sources, batch=8, augment_on=False):
  config = ml_collections.ConfigDict({
      'seed': 0,
      'data': {'sources': sources, 'data_dir': '/unused', 'image_size': 16,
               'eval_sources': ('a',), 'augment': augment_on, 'flip_prob': 0.5,
               'rotate_deg': 10.0, 'scale_range': (0.9, 1.1), 'intensity_shift': 0.05,
               'contrast_range': (0.9, 1.1), 'elastic_prob': 0.0,
               'num_workers': 0, 'prefetch': 2},
      'train': {'global_batch_size': batch},
  })
  return config


@pytest.fixture
def fake_sources(monkeypatch):
  sizes = {'a': (0, 37), 'b': (1, 101), 'c': (2, 13)}
  monkeypatch.setattr(datasets, 'load_split',
                      lambda name, split, data_dir, size: _FakeSource(*sizes[name]))


def test_mixing_weights_hold(fake_sources):
  config = _config({'a': 2.0, 'b': 1.0, 'c': 1.0})
  ds = pipeline.train_dataset(config)
  labels = np.concatenate([ds[i]['label'] for i in range(200)])
  fractions = np.bincount(labels, minlength=3) / len(labels)
  np.testing.assert_allclose(fractions, [0.5, 0.25, 0.25], atol=0.02)


def test_each_process_reads_a_disjoint_shard(fake_sources):
  config = _config({'b': 1.0}, batch=8)
  seen = []
  for index in range(2):
    ds = pipeline.train_dataset(config, pipeline.ProcessShard(index, 2))
    batch = ds[0]
    assert batch['image'].shape[0] == 4  # local batch = global / processes
    seen.append({float(v) for v in batch['image'][:, 0, 0]})
  assert not seen[0] & seen[1]


def test_batches_are_deterministic_and_resume_exactly(fake_sources):
  config = _config({'a': 1.0, 'b': 1.0}, augment_on=True)
  first = [b for _, b in zip(range(4), pipeline.iterate(
      pipeline.train_dataset(config), 0, config))]
  again = next(pipeline.iterate(pipeline.train_dataset(config), 3, config))
  for key in first[3]:
    np.testing.assert_array_equal(first[3][key], again[key])


def test_bad_weights_and_indivisible_process_batch(fake_sources):
  with pytest.raises(ValueError, match='positive weight'):
    pipeline.train_dataset(_config({'a': 0.0}))
  with pytest.raises(ValueError, match='not divisible by the number of processes'):
    pipeline.train_dataset(_config({'a': 1.0}, batch=6), pipeline.ProcessShard(0, 4))


def test_eval_batches_pad_with_invalid_examples(fake_sources):
  config = _config({'a': 1.0})
  batches = list(pipeline.eval_batches(config, 'validation', batch_size=16,
                                       source_name='a'))
  assert len(batches) == 3  # 37 examples
  valid = np.concatenate([b['valid'] for b in batches])
  assert valid.sum() == 37 and valid.shape == (48,)
  assert list(batches[0]['source'][:2]) == ['src0', 'src0']


def test_augmentation_moves_image_and_mask_together():
  size = 48
  image = np.zeros((size, size), np.float32)
  mask = np.zeros((size, size), np.int32)
  image[10:20, 5:15] = 1.0
  mask[10:20, 5:15] = 2
  aug = augment.Augmenter(flip_prob=1.0, rotate_deg=15.0, scale_range=(0.9, 1.1),
                          intensity_shift=0.0, contrast_range=(1.0, 1.0),
                          elastic_prob=1.0)
  out = aug({'image': image, 'mask': mask}, np.random.default_rng(3))
  assert out['mask'].dtype == mask.dtype
  assert set(np.unique(out['mask'])) <= {0, 2}  # nearest neighbour: no new labels
  bright = out['image'] > 0.5
  lesion = out['mask'] == 2
  overlap = (bright & lesion).sum() / max(lesion.sum(), 1)
  assert overlap > 0.8
  assert out['mask'][:, size // 2:].sum() > 0  # flipped to the other side


def test_intensity_jitter_touches_the_image_only():
  aug = augment.Augmenter(flip_prob=0.0, rotate_deg=0.0, scale_range=(1.0, 1.0),
                          intensity_shift=0.1, contrast_range=(0.8, 1.2))
  image = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
  mask = (image > 0.5).astype(np.int32)
  out = aug({'image': image, 'mask': mask}, np.random.default_rng(0))
  np.testing.assert_array_equal(out['mask'], mask)
  assert not np.allclose(out['image'], image)
  assert out['image'].min() >= 0 and out['image'].max() <= 1
