"""Input pipeline: weighted mixing, per-process shards, augmentation, eval padding."""

import ml_collections
import numpy as np
import pytest

from mtl_jax import errors
from mtl_jax.data import augment, datasets, pipeline, preprocess


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
            'source': f'src{self.tag}', 'spacing': np.zeros(2, np.float32),
            'soft_mask': np.zeros((self.size, self.size), np.float32),
            'has_soft_mask': np.float32(0)}


def _config(sources, batch=8, augment_on=False):
  config = ml_collections.ConfigDict({
      'seed': 0,
      'data': {'sources': sources, 'data_dir': '/unused', 'image_size': 16,
               'eval_sources': ('a',), 'augment': augment_on, 'flip_prob': 0.5,
               'rotate_deg': 10.0, 'scale_range': (0.9, 1.1), 'intensity_shift': 0.05,
               'contrast_range': (0.9, 1.1), 'elastic_prob': 0.0,
               'num_workers': 0, 'prefetch': 2, 'standardize': 'none',
               'standardize_reference': (0.5, 0.15), 'balance_classes': False,
               'lung_crop': False, 'pseudo_labels': '', 'train_size_schedule': ()},
      'model': {'widths': (8, 16)},
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


@pytest.mark.parametrize('processes', [2, 4])
def test_global_batches_do_not_depend_on_the_process_count(fake_sources, processes):
  # Issue 16: batch k holds the same examples, augmented the same way, on 1
  # process or N; the processes' local batches are its consecutive rows.
  config = _config({'a': 2.0, 'b': 1.0, 'c': 1.0}, batch=8, augment_on=True)
  whole = pipeline.train_dataset(config)
  shares = [pipeline.train_dataset(config, pipeline.ProcessShard(p, processes))
            for p in range(processes)]
  for step in (0, 1, 7):
    for key, value in whole[step].items():
      joined = np.concatenate([share[step][key] for share in shares])
      np.testing.assert_array_equal(joined, value, err_msg=f'{key} at step {step}')


def test_batches_are_deterministic_and_resume_exactly(fake_sources):
  config = _config({'a': 1.0, 'b': 1.0}, augment_on=True)
  first = [b for _, b in zip(range(4), pipeline.iterate(
      pipeline.train_dataset(config), 0, config))]
  again = next(pipeline.iterate(pipeline.train_dataset(config), 3, config))
  for key in first[3]:
    np.testing.assert_array_equal(first[3][key], again[key])


def test_bad_weights_and_indivisible_process_batch(fake_sources):
  with pytest.raises(errors.ConfigError, match='positive weight'):
    pipeline.train_dataset(_config({'a': 0.0}))
  with pytest.raises(errors.ConfigError, match='not divisible by the number of processes'):
    pipeline.train_dataset(_config({'a': 1.0}, batch=6), pipeline.ProcessShard(0, 4))


def test_eval_batches_pad_with_invalid_examples(fake_sources):
  config = _config({'a': 1.0})
  batches = list(pipeline.eval_batches(config, 'validation', batch_size=16,
                                       source_name='a'))
  assert len(batches) == 3  # 37 examples
  valid = np.concatenate([b['valid'] for b in batches])
  assert valid.sum() == 37 and valid.shape == (48,)
  assert list(batches[0]['source'][:2]) == ['src0', 'src0']


class _RenderedSource(_FakeSource):
  """Noisy 'CT renderings' with a black border, brightness set per source,
  and an optional class imbalance (the first `n_covid` examples are COVID)."""

  def __init__(self, tag, n, brightness, contrast, n_covid=None):
    super().__init__(tag, n)
    self.brightness, self.contrast, self.n_covid = brightness, contrast, n_covid

  def __getitem__(self, i):
    example = super().__getitem__(i)
    rng = np.random.default_rng([self.tag, i])
    image = np.zeros((self.size, self.size), np.float32)
    image[2:-2, 2:-2] = np.clip(self.brightness + self.contrast * rng.standard_normal(
        (self.size - 4, self.size - 4)), 0.05, 1.0)
    example['image'] = image
    if self.n_covid is not None:
      label = 0 if i < self.n_covid else 1
      example['label'] = np.int32(label)
      example['label_set'] = np.eye(3, dtype=np.float32)[label]
    return example


@pytest.fixture
def rendered_sources(monkeypatch):
  sources = {'dark': _RenderedSource(0, 40, 0.25, 0.05, n_covid=36),
             'bright': _RenderedSource(1, 30, 0.7, 0.12)}
  monkeypatch.setattr(datasets, 'load_split',
                      lambda name, split, data_dir, size: sources[name])


def _foreground_mean_std(images):
  values = np.asarray(images)[np.asarray(images) > preprocess.FOREGROUND]
  return values.mean(), values.std()


@pytest.mark.parametrize('mode', ['per_source', 'per_image'])
def test_standardisation_maps_every_source_to_the_reference(rendered_sources, mode):
  config = _config({'dark': 1.0, 'bright': 1.0})
  config.data.eval_sources = ('dark', 'bright')
  config.data.standardize = mode
  if mode == 'per_source':
    stats = pipeline.source_stats(config)
    assert stats['dark'][0] == pytest.approx(0.25, abs=0.01)
    assert stats['bright'][0] == pytest.approx(0.7, abs=0.02)
  for name in ('dark', 'bright'):
    batch = next(pipeline.eval_batches(config, 'validation', 16, name))
    mean, std = _foreground_mean_std(batch['image'])
    assert mean == pytest.approx(0.5, abs=0.01) and std == pytest.approx(0.15, abs=0.01)
    assert np.all(batch['image'][:, 0, :] == 0)  # the black border stays black
  train_batch = pipeline.train_dataset(config)[0]['image']
  assert _foreground_mean_std(train_batch)[0] == pytest.approx(0.5, abs=0.03)


def test_unknown_standardisation_mode_is_named(rendered_sources):
  config = _config({'dark': 1.0})
  config.data.standardize = 'zscore'
  with pytest.raises(errors.ConfigError, match="standardize='zscore'; valid modes: none"):
    pipeline.train_dataset(config)


def test_class_balancing_within_a_source_keeps_source_weights(rendered_sources):
  config = _config({'dark': 1.0, 'bright': 1.0}, batch=20)
  counts = {}
  for balance in (False, True):
    config.data.balance_classes = balance
    ds = pipeline.train_dataset(config)
    batches = [ds[i] for i in range(60)]
    labels = np.concatenate([b['label'] for b in batches])
    counts[balance] = np.bincount(labels, minlength=3) / len(labels)
  # 'dark' is 90% COVID (label 0) and 10% normal (1); 'bright' is all normal.
  np.testing.assert_allclose(counts[False], [0.45, 0.55, 0.0], atol=0.03)
  np.testing.assert_allclose(counts[True], [0.25, 0.75, 0.0], atol=0.03)


def test_standardize_keeps_background_and_range():
  image = np.zeros((8, 8), np.float32)
  image[2:6, 2:6] = np.linspace(0.1, 0.9, 16).reshape(4, 4)
  out = preprocess.standardize(image, preprocess.foreground_stats(image), (0.4, 0.25))
  assert np.all(out[image <= preprocess.FOREGROUND] == 0)
  assert out.min() >= 0 and out.max() <= 1 and out.dtype == np.float32
  assert preprocess.stats_from_moments(0, 0.0, 0.0) == (0.5, 0.25)  # all black


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


def test_lung_crop_applies_to_training_and_evaluation(monkeypatch):
  from test_preprocess import chest_phantom  # pylint: disable=g-import-not-at-top
  image, lesion, _ = chest_phantom(size=16 * 4)

  class Phantoms(_FakeSource):
    def __getitem__(self, i):
      example = super().__getitem__(i)
      example.update(image=image, mask=lesion.astype(np.int32))
      return example

  monkeypatch.setattr(datasets, 'load_split', lambda *a: Phantoms(0, 4, size=64))
  config = _config({'a': 1.0}, batch=4)
  config.data.image_size, config.data.lung_crop = 64, True
  expected = pipeline.crop_to_lungs({'image': image, 'mask': lesion.astype(np.int32)})
  train_batch = pipeline.train_dataset(config)[0]
  eval_batch = next(pipeline.eval_batches(config, 'validation', 4, 'a'))
  for batch in (train_batch, eval_batch):
    np.testing.assert_allclose(batch['image'][0], expected['image'], atol=1e-6)
    np.testing.assert_array_equal(batch['mask'][0], expected['mask'])


def test_worker_processes_yield_the_same_batches(fake_sources):
  """grain worker processes (data.num_workers > 0) change speed, not batches."""
  config = _config({'a': 1.0, 'b': 1.0}, augment_on=True)
  threads = [b for _, b in zip(range(3), pipeline.iterate(
      pipeline.train_dataset(config), 2, config))]
  config.data.num_workers = 2
  workers = [b for _, b in zip(range(3), pipeline.iterate(
      pipeline.train_dataset(config), 2, config))]
  for a, b in zip(threads, workers, strict=True):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
