"""Deterministic synthetic chest CT slices in Hounsfield units, with lesion masks.

The built-in default data: it lets the demo and the tests run anywhere, with
no download. Anatomy is drawn in normalised coordinates (so any size works):
air, an elliptical body with subcutaneous fat, a vertebra, two irregular lungs
(about -850 HU) with vessels. COVID-19 slices get peripheral, often bilateral
ground-glass opacity (-700..-300 HU, label 1) with consolidation cores
(-100..+50 HU, label 2); normal slices get nothing; other pathology gets solid
nodules, a mass or a pleural effusion, which a model must learn *not* to
segment. Everything is a pure function of the seed.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from mtl_jax.data import features
from mtl_jax.data.preprocess import window_hu

KINDS = ('covid19', 'normal', 'other')
SPLIT_OFFSETS = {'train': 0, 'validation': 1, 'test': 2}


def _grid(size):
  axis = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
  return np.meshgrid(axis, axis, indexing='ij')  # y (anterior->posterior), x


def _smooth_noise(rng, size, sigma_frac):
  field = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32),
                                  sigma_frac * size, mode='wrap')
  return field / (field.std() + 1e-6)


def _irregular_ellipse(y, x, cy, cx, ry, rx, rng, wobble=0.08):
  """An ellipse whose radius varies smoothly with angle."""
  angle = np.arctan2((y - cy) / ry, (x - cx) / rx)
  harmonics = sum(rng.normal(0, wobble / k) * np.cos(k * angle + rng.uniform(0, 2 * np.pi))
                  for k in (2, 3, 4))
  r = np.sqrt(((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2)
  return r < 1.0 + harmonics


def _anatomy(rng, size, y, x):
  """(hu, lungs) for a normal slice; `lungs` is a (2, S, S) bool per lung."""
  hu = np.full((size, size), -1000.0, np.float32)
  by, bx = rng.uniform(0.62, 0.78), rng.uniform(0.82, 0.95)
  cy = rng.uniform(-0.05, 0.08)
  body = _irregular_ellipse(y, x, cy, 0.0, by, bx, rng, 0.02)
  inner = _irregular_ellipse(y, x, cy, 0.0, by - 0.07, bx - 0.07, rng, 0.02)
  hu[body] = -100.0  # subcutaneous fat
  hu[inner] = 40.0   # muscle, mediastinum
  spine_y = cy + by - 0.22
  hu[(y - spine_y) ** 2 + x ** 2 < 0.11 ** 2] = 300.0
  hu[(y - spine_y) ** 2 + x ** 2 < 0.08 ** 2] = 700.0
  lungs = []
  ly, lry = cy - rng.uniform(0.02, 0.1), rng.uniform(0.42, 0.55)
  for side in (-1, 1):
    lcx = side * rng.uniform(0.34, 0.42)
    lrx = rng.uniform(0.22, 0.3)
    lung = _irregular_ellipse(y, x, ly, lcx, lry, lrx, rng, 0.06) & inner
    # Flatten the medial side towards the heart.
    lung &= side * x > rng.uniform(0.08, 0.14)
    lungs.append(lung)
    hu[lung] = -850.0
  lungs = np.stack(lungs)
  any_lung = lungs.any(0)
  # Vessels: bright small blobs and branches, denser near the hilum.
  vessel_field = _smooth_noise(rng, size, 0.012)
  hilum_dist = np.minimum((x + 0.15) ** 2, (x - 0.15) ** 2) + (y - ly) ** 2
  threshold = 2.1 + 1.5 * np.sqrt(hilum_dist)
  vessels = any_lung & (vessel_field > threshold)
  hu[vessels] = rng.uniform(-50, 80)
  hu += rng.normal(0.0, 8.0, hu.shape).astype(np.float32) * any_lung
  return hu, lungs


def _peripheral_blobs(rng, size, y, x, lung, count, radius_range):
  """Irregular blobs seeded near the lung's border (subpleural)."""
  inside = ndimage.distance_transform_edt(lung) / size * 2  # normalised units
  candidates = np.argwhere(lung & (inside < 0.12) & (inside > 0.02))
  blob = np.zeros_like(lung)
  if len(candidates) == 0:
    return blob
  field = _smooth_noise(rng, size, 0.03)
  for _ in range(count):
    cy, cx = candidates[rng.integers(len(candidates))]
    cy, cx = y[cy, cx], x[cy, cx]
    r = rng.uniform(*radius_range)
    d = np.sqrt((y - cy) ** 2 + (x - cx) ** 2) / r
    blob |= (d + 0.35 * field * np.clip(d, 0, 1)) < 1.0
  return blob & lung


def _covid(rng, size, y, x, hu, lungs):
  mask = np.zeros((size, size), np.uint8)
  sides = [0, 1] if rng.random() < 0.65 else [int(rng.integers(2))]
  for side in sides:
    ggo = _peripheral_blobs(rng, size, y, x, lungs[side],
                            int(rng.integers(1, 4)), (0.07, 0.2))
    texture = _smooth_noise(rng, size, 0.01)
    level = rng.uniform(-620, -420)
    hu[ggo] = np.clip(level + 60 * texture[ggo], -700, -300)
    mask[ggo] = 1
    if rng.random() < 0.55:  # consolidation: the denser core of a patch
      depth = ndimage.distance_transform_edt(ggo) / size * 2
      core = ggo & (depth > rng.uniform(0.025, 0.05))
      hu[core] = np.clip(rng.uniform(-60, 20) + 15 * texture[core], -100, 50)
      mask[core] = 2
  return mask


def _other(rng, size, y, x, hu, lungs):
  choice = rng.choice(['nodules', 'mass', 'effusion'], p=[0.45, 0.25, 0.3])
  side = int(rng.integers(2))
  lung = lungs[side]
  points = np.argwhere(lung)
  if choice == 'effusion':
    ys = y[lung]
    level = np.quantile(ys, rng.uniform(0.55, 0.75))
    fluid = lung & (y > level)
    hu[fluid] = rng.normal(12, 8, int(fluid.sum()))
    return
  count, radius = ((int(rng.integers(1, 4)), (0.025, 0.06)) if choice == 'nodules'
                   else (1, (0.1, 0.17)))
  for _ in range(count):
    py, px = points[rng.integers(len(points))]
    r = rng.uniform(*radius)
    blob = ((y - y[py, px]) ** 2 + (x - x[py, px]) ** 2 < r ** 2) & lung
    hu[blob] = rng.normal(35, 10, int(blob.sum()))


def generate_slice(rng: np.random.Generator, kind: str, size: int):
  """(hu float32 (S, S), mask uint8 (S, S)) for one slice of class `kind`."""
  if kind not in KINDS:
    raise ValueError(f'kind must be one of {KINDS}, got {kind!r}')
  y, x = _grid(size)
  hu, lungs = _anatomy(rng, size, y, x)
  mask = np.zeros((size, size), np.uint8)
  if kind == 'covid19':
    mask = _covid(rng, size, y, x, hu, lungs)
  elif kind == 'other':
    _other(rng, size, y, x, hu, lungs)
  hu = ndimage.gaussian_filter(hu, 0.004 * size)
  hu += rng.normal(0.0, 20.0, hu.shape).astype(np.float32)
  return np.clip(hu, -1024, 3000).astype(np.float32), mask


def _patients(rng, num_examples):
  """Group slice indices into synthetic patients of 1-4 slices."""
  groups, start = [], 0
  while start < num_examples:
    n = int(min(rng.integers(1, 5), num_examples - start))
    groups.append(range(start, start + n))
    start += n
  return groups


def generate_split(seed: int, num_examples: int, size: int, split: str,
                   window=(-1000.0, 400.0)):
  """Yield (key, example) in the shared feature spec.

  train: heterogeneous cohorts like the real data — `synthetic_seg` (COVID
  slices with masks, 30% without a class label) and `synthetic_cls` (labels,
  no masks; 15% of the non-COVID ones only as the set {normal, other}).
  validation/test: every slice has a label and a mask (normal and other have
  a genuinely empty lesion mask), classes about 1/2 COVID, 1/4 normal, 1/4 other.
  """
  if split not in SPLIT_OFFSETS:
    raise ValueError(f'split must be one of {tuple(SPLIT_OFFSETS)}, got {split!r}')
  rng = np.random.default_rng([seed, SPLIT_OFFSETS[split]])
  for p, slices in enumerate(_patients(rng, num_examples)):
    patient_id = f'synth-{split}-{p:05d}'
    if split == 'train':
      cohort = 'synthetic_seg' if rng.random() < 0.4 else 'synthetic_cls'
      kind = 'covid19' if cohort == 'synthetic_seg' else KINDS[rng.integers(3)]
    else:
      cohort, kind = 'synthetic_ct', rng.choice(KINDS, p=[0.5, 0.25, 0.25])
    for i in slices:
      hu, mask = generate_slice(rng, str(kind), size)
      label, label_set, keep_mask = KINDS.index(kind), None, True
      if cohort == 'synthetic_seg' and rng.random() < 0.3:
        label = None
      elif cohort == 'synthetic_cls':
        keep_mask = False
        if kind != 'covid19' and rng.random() < 0.15:
          label, label_set = None, features.NON_COVID
      example = features.make_example(
          window_hu(hu, *window), mask if keep_mask else None, label, label_set,
          patient_id=patient_id, source=cohort, spacing=(0.7 * 512 / size,) * 2)
      yield f'{split}-{i:06d}', example
