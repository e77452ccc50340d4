"""The one feature spec every dataset builder writes, and its encode/decode.

Datasets differ in which labels they carry; the spec does not. Missing
labels are explicit (`has_mask`, `has_label`) rather than absent, so one
batch can mix datasets and the losses mask per example. A label may be a
*set* (`label_set`): UCSD "non-COVID" is {normal, other} without saying which.
A model-made lesion mask (a pseudo label) is a feature of its own,
`soft_mask` with `has_soft_mask`: only its own loss term reads it, and no
metric ever counts it as ground truth. Datasets built before it existed
decode with an empty one.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

CLASS_NAMES = ('covid19', 'normal', 'other')
COVID = CLASS_NAMES.index('covid19')  # the class every COVID-vs-rest score reads
NORMAL = CLASS_NAMES.index('normal')
OTHER = CLASS_NAMES.index('other')  # another pathology (pneumonia, cancer, ...)
SEG_CLASS_NAMES = ('background', 'ggo', 'consolidation')
NON_COVID = (0, 1, 1)  # label_set for "normal or other pathology"
NORMAL_ONLY = (0, 1, 0)  # label_set of a slice known to be normal: no lesion on it


def covid_vs_rest(label_set):
  """Per example: 1 COVID, 0 not COVID, -1 unknown (a set that holds COVID
  and something else). Known whenever the set is decided about COVID."""
  return np.where(label_set[:, COVID] == 0, 0, np.where(label_set.sum(-1) == 1, 1, -1))


def is_normal(label_set):
  """Per example: the label set is exactly {normal} (numpy or jax arrays)."""
  return (label_set == np.asarray(NORMAL_ONLY, np.uint8)).all(axis=-1)
_UINT16_MAX = 65535.0


def features_dict(image_size: int) -> tfds.features.FeaturesDict:
  """The TFDS features every builder stores, at `image_size` x `image_size`."""
  s = (image_size, image_size)
  return tfds.features.FeaturesDict({
      # Preprocessed image in [0, 1], quantised to uint16 and zlib-compressed.
      'image': tfds.features.Tensor(shape=s, dtype=np.uint16, encoding='zlib'),
      'mask': tfds.features.Tensor(shape=s, dtype=np.uint8, encoding='zlib'),
      'has_mask': tfds.features.Tensor(shape=(), dtype=np.bool_),
      'label': tfds.features.Tensor(shape=(), dtype=np.int64),
      'label_set': tfds.features.Tensor(shape=(len(CLASS_NAMES),), dtype=np.uint8),
      'has_label': tfds.features.Tensor(shape=(), dtype=np.bool_),
      'patient_id': tfds.features.Text(),
      'source': tfds.features.Text(),
      'spacing': tfds.features.Tensor(shape=(2,), dtype=np.float32),
      # Pseudo label: a model's lesion probability x 255 (not ground truth).
      'soft_mask': tfds.features.Tensor(shape=s, dtype=np.uint8, encoding='zlib'),
      'has_soft_mask': tfds.features.Tensor(shape=(), dtype=np.bool_),
  })


def encode_image(image01: np.ndarray) -> np.ndarray:
  """A [0, 1] image as stored: uint16 (finer than the 8-bit sources, half of f32)."""
  return np.round(np.clip(image01, 0.0, 1.0) * _UINT16_MAX).astype(np.uint16)


def decode_image(stored: np.ndarray) -> np.ndarray:
  """The stored uint16 image back as float32 in [0, 1]."""
  return stored.astype(np.float32) / _UINT16_MAX


def make_example(image01, mask=None, label=None, label_set=None, *,
                 patient_id: str, source: str, spacing=None, soft_mask=None) -> dict:
  """A validated record in the shared spec.

  `image01` is a square float image in [0, 1] (already windowed/resized);
  `mask` has the same shape with values 0 background, 1 ground glass,
  2 consolidation (None: unknown, stored as zeros with has_mask False).
  `label` is an exact class index; `label_set` a collection of allowed class
  indices or a multi-hot vector (for partial labels, e.g. `NON_COVID`). Give
  at most one; neither means unlabelled (label -1, has_label False). An exact
  label is stored as a one-hot `label_set`, and a one-element set as an exact
  label. `spacing` is the pixel size in mm (None: unknown, stored as 0, 0).
  `soft_mask` is a model-made lesion probability in [0, 1] of the image's
  shape (a pseudo label; None: none).
  Raises ValueError on anything inconsistent.
  """
  image01 = np.asarray(image01, np.float32)
  if image01.ndim != 2 or image01.shape[0] != image01.shape[1] or not image01.size:
    raise ValueError(f'{patient_id}: image must be a square 2-D (S, S) array, got '
                     f'shape {image01.shape}')
  if not np.all(np.isfinite(image01)) or image01.min() < 0 or image01.max() > 1:
    raise ValueError(f'{patient_id}: image must be finite and in [0, 1]')
  if mask is not None:
    mask = np.asarray(mask)
    if mask.shape != image01.shape:
      raise ValueError(f'{patient_id}: mask shape {mask.shape} != image shape '
                       f'{image01.shape}')
    bad = sorted(set(np.unique(mask).tolist()) - set(range(len(SEG_CLASS_NAMES))))
    if bad:
      raise ValueError(f'{patient_id}: mask has unexpected label values {bad}; '
                       f'expected 0..{len(SEG_CLASS_NAMES) - 1}')
  if soft_mask is not None:
    soft_mask = np.asarray(soft_mask, np.float32)
    if soft_mask.shape != image01.shape or not np.all(np.isfinite(soft_mask)) or (
        soft_mask.size and (soft_mask.min() < 0 or soft_mask.max() > 1)):
      raise ValueError(f'{patient_id}: soft_mask must be finite, in [0, 1] and of the '
                       f'image shape {image01.shape}, got shape {soft_mask.shape}')
  if label is not None and label_set is not None:
    raise ValueError(f'{patient_id}: give label or label_set, not both')
  multi_hot = np.zeros(len(CLASS_NAMES), np.uint8)
  if label is not None:
    if not 0 <= int(label) < len(CLASS_NAMES):
      raise ValueError(f'{patient_id}: label {label} not in 0..{len(CLASS_NAMES) - 1}')
    multi_hot[int(label)] = 1
  elif label_set is not None:
    label_set = np.asarray(label_set)
    if label_set.shape == (len(CLASS_NAMES),) and set(label_set.tolist()) <= {0, 1}:
      multi_hot[:] = label_set  # a multi-hot vector
    else:  # a collection of class indices
      indices = label_set.reshape(-1).tolist()
      if any(int(i) != i or not 0 <= i < len(CLASS_NAMES) for i in indices):
        raise ValueError(f'{patient_id}: label_set {label_set.tolist()} must be a '
                         f'multi-hot vector of length {len(CLASS_NAMES)} or class '
                         f'indices in 0..{len(CLASS_NAMES) - 1}')
      multi_hot[[int(i) for i in indices]] = 1
    if multi_hot.sum() == 1:  # a one-element set is an exact label
      label = int(np.argmax(multi_hot))
  if spacing is not None:
    spacing = np.asarray(spacing, np.float32)
    if spacing.shape != (2,) or not np.all(np.isfinite(spacing)) or np.any(spacing < 0):
      raise ValueError(f'{patient_id}: spacing must be two finite non-negative '
                       f'values (mm), got {spacing.tolist()}')
  return {
      'image': encode_image(image01),
      'mask': (np.zeros(image01.shape, np.uint8) if mask is None
               else mask.astype(np.uint8)),
      'has_mask': mask is not None,
      'label': -1 if label is None else int(label),
      'label_set': multi_hot,
      'has_label': bool(multi_hot.any()),
      'patient_id': str(patient_id),
      'source': str(source),
      'spacing': np.zeros(2, np.float32) if spacing is None else spacing,
      'soft_mask': (np.zeros(image01.shape, np.uint8) if soft_mask is None
                    else np.round(soft_mask * 255.0).astype(np.uint8)),
      'has_soft_mask': soft_mask is not None,
  }


def _text(value) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def decode_example(raw: dict) -> dict:
  """A stored record as model inputs (numpy) plus its string fields."""
  return {
      'image': decode_image(np.asarray(raw['image'])),
      'mask': np.asarray(raw['mask'], np.int32),
      'has_mask': np.float32(raw['has_mask']),
      'label': np.int32(raw['label']),
      'label_set': np.asarray(raw['label_set'], np.float32),
      'has_label': np.float32(raw['has_label']),
      'patient_id': _text(raw['patient_id']),
      'source': _text(raw['source']),
      'spacing': np.asarray(raw['spacing'], np.float32),
      'soft_mask': (np.asarray(raw['soft_mask'], np.float32) / 255.0 if 'soft_mask' in raw
                    else np.zeros(np.shape(raw['image']), np.float32)),
      'has_soft_mask': np.float32(raw.get('has_soft_mask', False)),
  }
