"""Synthetic CT, the shared feature spec, the synthetic_ct builder and the registry."""

import collections
import os

import numpy as np
import pytest
from scipy import ndimage

from mtl_jax import errors
from mtl_jax.data import datasets, features, synthetic
from mtl_jax.tfds_builders import registry

SIZE = 64


def _slices(kind, n, seed=0, size=SIZE):
  rng = np.random.default_rng(seed)
  return [synthetic.generate_slice(rng, kind, size, return_lungs=True) for _ in range(n)]


@pytest.fixture(scope='module')
def covid_slices():
  return _slices('covid19', 12, seed=1, size=96)


def test_generate_slice_is_deterministic_and_typed():
  for kind in synthetic.KINDS:
    a = synthetic.generate_slice(np.random.default_rng(7), kind, SIZE)
    b = synthetic.generate_slice(np.random.default_rng(7), kind, SIZE)
    c = synthetic.generate_slice(np.random.default_rng(8), kind, SIZE)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    hu, mask = a
    assert hu.shape == mask.shape == (SIZE, SIZE)
    assert hu.dtype == np.float32 and mask.dtype == np.uint8
  with pytest.raises(ValueError, match='kind'):
    synthetic.generate_slice(np.random.default_rng(0), 'flu', SIZE)


def test_generate_split_is_deterministic():
  a = list(synthetic.generate_split(3, 6, SIZE, 'train'))
  b = list(synthetic.generate_split(3, 6, SIZE, 'train'))
  assert [k for k, _ in a] == [k for k, _ in b]
  for (_, x), (_, y) in zip(a, b):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  c = list(synthetic.generate_split(4, 6, SIZE, 'train'))
  assert not np.array_equal(a[0][1]['image'], c[0][1]['image'])


def test_hounsfield_ranges(covid_slices):
  # Air outside the body, lungs around -850 HU, soft tissue and bone present.
  for hu, mask, lungs in _slices('normal', 4) + covid_slices[:4]:
    assert abs(np.median(hu[:3]) + 1000) < 40  # the top rows are air
    # Away from the lung border (partial volume with the chest wall at 64 px).
    parenchyma = hu[ndimage.binary_erosion(lungs, iterations=2) & (mask == 0)]
    assert -900 < np.median(parenchyma) < -780
    assert np.percentile(hu, 99.9) > 300  # bone
  ggo, cons = [], []
  for hu, mask, lungs in covid_slices:
    assert mask.any()
    ggo.append(hu[mask == 1])
    cons.append(hu[mask == 2])
  ggo, cons = np.concatenate(ggo), np.concatenate(cons)
  assert cons.size > 0
  # The lesions' own values lie in the ranges; noise, partial volume at the
  # edges and vessels seen through the ground glass spread a few pixels out.
  assert -650 < np.median(ggo) < -350
  assert np.mean((ggo > -760) & (ggo < -240)) > 0.9
  assert -80 < np.median(cons) < 30
  assert np.mean((cons > -160) & (cons < 110)) > 0.9


def test_masks_only_inside_lungs_and_only_for_covid(covid_slices):
  for hu, mask, lungs in covid_slices:
    assert set(np.unique(mask).tolist()) <= {0, 1, 2}
    assert not np.any(mask[~lungs])
  for kind in ('normal', 'other'):
    for hu, mask, lungs in _slices(kind, 6, seed=2):
      assert not mask.any(), kind
      assert lungs.sum() > 0.1 * SIZE * SIZE


def test_other_pathology_is_visible():
  # Nodules, masses and effusions make the lungs denser than a normal slice's.
  def dense_fraction(kind):
    values = [np.mean(hu[lungs] > -300) for hu, _, lungs in _slices(kind, 20, seed=3)]
    return np.asarray(values)
  assert np.median(dense_fraction('other')) > np.median(dense_fraction('normal')) + 0.01


def test_train_split_is_heterogeneous():
  examples = [e for _, e in synthetic.generate_split(0, 300, 32, 'train')]
  sources = collections.Counter(e['source'] for e in examples)
  assert set(sources) == {'synthetic_seg', 'synthetic_cls'}
  seg = [e for e in examples if e['source'] == 'synthetic_seg']
  cls = [e for e in examples if e['source'] == 'synthetic_cls']
  assert all(e['has_mask'] for e in seg)
  with_lesion = np.mean([e['mask'].any() for e in seg])
  assert 0.4 < with_lesion < 0.8  # lesion-free slices teach what is not a lesion
  assert all(e['mask'].any() == (e['label'] == 0) for e in seg if e['label'] >= 0)
  assert 0.1 < np.mean([not e['has_label'] for e in seg]) < 0.55
  assert not any(e['has_mask'] for e in cls)
  assert all(not e['mask'].any() for e in cls)
  assert all(e['has_label'] for e in cls)
  assert {e['label'] for e in cls} == {-1, 0, 1, 2}
  set_labelled = [e for e in cls if e['label'] == -1]
  assert set_labelled
  for e in set_labelled:
    np.testing.assert_array_equal(e['label_set'], features.NON_COVID)
  non_covid = [e for e in cls if e['label'] != 0]
  assert 0.03 < len(set_labelled) / len(non_covid) < 0.35
  for e in examples:  # one-hot sets for exact labels, empty when unlabelled
    if e['label'] >= 0:
      assert e['label_set'].sum() == 1 and e['label_set'][e['label']] == 1
    assert e['has_label'] == bool(e['label_set'].any())


@pytest.mark.parametrize('split', ['validation', 'test'])
def test_eval_splits_fully_labelled_and_balanced(split):
  examples = [e for _, e in synthetic.generate_split(0, 200, 32, split)]
  assert all(e['has_mask'] and e['has_label'] and e['label'] >= 0 for e in examples)
  counts = collections.Counter(int(e['label']) for e in examples)
  assert 0.35 < counts[0] / len(examples) < 0.65
  assert counts[1] > 0.12 * len(examples) and counts[2] > 0.12 * len(examples)
  for e in examples:
    assert e['mask'].any() == (e['label'] == 0)


def test_patients_group_slices_and_never_cross_splits():
  ids = {}
  for split in ('train', 'validation', 'test'):
    keys_and_examples = list(synthetic.generate_split(0, 40, 32, split))
    assert len({k for k, _ in keys_and_examples}) == 40
    per_patient = collections.Counter(e['patient_id'] for _, e in keys_and_examples)
    assert max(per_patient.values()) <= 4 and len(per_patient) < 40
    ids[split] = set(per_patient)
  assert not ids['train'] & ids['validation']
  assert not ids['train'] & ids['test']
  assert not ids['validation'] & ids['test']


def test_make_example_validates():
  image = np.full((8, 8), 0.5, np.float32)
  ok = features.make_example(image, np.zeros((8, 8), np.uint8), label=2,
                             patient_id='p', source='s', spacing=(0.7, 0.7))
  assert ok['has_mask'] and ok['has_label'] and ok['label'] == 2
  np.testing.assert_array_equal(ok['label_set'], [0, 0, 1])
  assert ok['image'].dtype == np.uint16
  unlabelled = features.make_example(image, patient_id='p', source='s')
  assert not unlabelled['has_mask'] and not unlabelled['has_label']
  assert unlabelled['label'] == -1 and not unlabelled['label_set'].any()
  partial = features.make_example(image, label_set=[1, 2], patient_id='p', source='s')
  np.testing.assert_array_equal(partial['label_set'], features.NON_COVID)
  assert partial['label'] == -1 and partial['has_label']
  single = features.make_example(image, label_set=[0, 1, 0], patient_id='p', source='s')
  assert single['label'] == 1

  with pytest.raises(ValueError, match='mask shape'):
    features.make_example(image, np.zeros((8, 9), np.uint8), patient_id='p', source='s')
  with pytest.raises(ValueError, match='label values'):
    features.make_example(image, np.full((8, 8), 3, np.uint8), patient_id='p', source='s')
  with pytest.raises(ValueError, match=r'\[0, 1\]'):
    features.make_example(image * 3, patient_id='p', source='s')
  with pytest.raises(ValueError, match=r'\[0, 1\]'):
    features.make_example(np.full((8, 8), np.nan), patient_id='p', source='s')
  with pytest.raises(ValueError, match='square'):
    features.make_example(np.zeros((8, 6)), patient_id='p', source='s')
  with pytest.raises(ValueError, match='not both'):
    features.make_example(image, label=0, label_set=[1, 2], patient_id='p', source='s')
  with pytest.raises(ValueError, match='label'):
    features.make_example(image, label=3, patient_id='p', source='s')
  with pytest.raises(ValueError, match='label_set'):
    features.make_example(image, label_set=[4], patient_id='p', source='s')
  with pytest.raises(ValueError, match='spacing'):
    features.make_example(image, patient_id='p', source='s', spacing=(1.0,))


def test_encode_decode_image_roundtrip():
  image = np.random.default_rng(0).random((16, 16)).astype(np.float32)
  decoded = features.decode_image(features.encode_image(image))
  assert decoded.dtype == np.float32
  np.testing.assert_allclose(decoded, image, atol=1 / 65535)


def test_builder_roundtrip_through_load_split(tmp_path):
  data_dir = str(tmp_path)
  sizes = {'train': 10, 'validation': 6, 'test': 5}
  path = registry.build_dataset('synthetic_ct', data_dir, SIZE, num_train=sizes['train'],
                                num_validation=sizes['validation'], num_test=sizes['test'])
  assert os.path.isdir(path) and path.startswith(data_dir)
  # Built again: found, not rebuilt.
  assert registry.build_dataset('synthetic_ct', data_dir, SIZE, num_train=1) == path
  for split, n in sizes.items():
    source = datasets.load_split('synthetic_ct', split, data_dir, SIZE)
    assert len(source) == n
    expected = [e for _, e in synthetic.generate_split(0, n, SIZE, split)]
    got = sorted((source[i] for i in range(n)),
                 key=lambda e: (e['patient_id'], e['image'].tobytes()))
    expected = sorted((features.decode_example(e) for e in expected),
                      key=lambda e: (e['patient_id'], e['image'].tobytes()))
    for g, e in zip(got, expected):
      assert set(g) == set(e) == {'image', 'mask', 'has_mask', 'label', 'label_set',
                                  'has_label', 'patient_id', 'source', 'spacing',
                                  'soft_mask', 'has_soft_mask'}
      for key in g:
        np.testing.assert_array_equal(g[key], e[key], err_msg=key)
    example = got[0]
    assert example['image'].dtype == np.float32 and example['image'].shape == (SIZE, SIZE)
    assert example['mask'].dtype == np.int32
    assert example['label'].dtype == np.int32
    assert example['label_set'].dtype == np.float32 and example['label_set'].shape == (3,)
    assert example['has_mask'].dtype == example['has_label'].dtype == np.float32
    assert example['spacing'].dtype == np.float32 and example['spacing'].shape == (2,)
    assert isinstance(example['patient_id'], str) and isinstance(example['source'], str)


def test_missing_and_unknown_datasets(tmp_path):
  missing = tmp_path / 'nowhere'
  with pytest.raises(datasets.DatasetNotFoundError) as info:
    datasets.load_split('synthetic_ct', 'train', str(missing), SIZE)
  message = str(info.value)
  assert isinstance(info.value, errors.UserError)
  assert '\n' not in message
  assert str(missing) in message and 'synthetic_ct' in message
  assert 'mtl-jax build-data synthetic_ct --data_dir' in message
  with pytest.raises(errors.DatasetNotFoundError, match='build-data no_such_dataset'):
    datasets.load_split('no_such_dataset', 'train', str(tmp_path), SIZE)
  with pytest.raises(errors.DatasetNotFoundError, match='known datasets: .*synthetic_ct'):
    registry.build_dataset('no_such_dataset', str(tmp_path), SIZE)
