"""Deterministic synthetic chest CT slices in Hounsfield units, with lesion masks.

The built-in default data: it lets the demo and the tests run anywhere, with
no download. Each slice is an axial section in radiological convention
(anterior at the top, the patient's right on the image left), drawn in
normalised coordinates so any size works:

* air (-1000 HU) and the CT table; a body with subcutaneous fat (~-100 HU),
  chest-wall muscle (~+45 HU) and ribs; a vertebra (cortical rim, cancellous
  body, canal, posterior elements); a mediastinum with fat, heart, aorta and
  trachea or main bronchi depending on the slice level;
* two lungs (~-850 HU, denser posteriorly) filling the thoracic cavity, with
  a branching vessel tree (partial-volume blurred, ~+40 HU), through-plane
  vessel dots and peri-hilar bronchi;
* COVID-19: peripheral, subpleural, posterior-predominant and often bilateral
  ground-glass patches (-700..-300 HU, vessels still visible through them,
  label 1) with consolidated cores (-100..+50 HU, label 2);
* other pathology: solid nodules, a lobulated mass or a dependent pleural
  effusion (~+10 HU), which a model must learn *not* to segment;
* normal: nothing.

Anatomy varies per patient (body habitus, fat, lung shape, heart size,
rotation, table height) and per slice (level from apex to base). The result
goes through slight partial-volume blur and correlated ~20 HU noise. All of
it is a pure function of the random generator's state.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from mtl_jax.data import features
from mtl_jax.data.preprocess import LUNG_WINDOW, window_hu
from mtl_jax.data.synthetic_anatomy import (CONSOLIDATION_RANGE, GGO_RANGE, LUNG_HU,
                                            NOISE_HU, draw_anatomy, smooth_noise,
                                            smooth_region, sample_patient)

KINDS = features.CLASS_NAMES  # ('covid19', 'normal', 'other')
SPLIT_OFFSETS = {'train': 0, 'validation': 1, 'test': 2}
FIELD_OF_VIEW_MM = 358.4  # 512 pixels of 0.7 mm

def _border_seed(rng, f, lung, depth):
  """A point just inside the lung border, preferring posterior and lateral."""
  candidates = np.argwhere(lung & (depth < 0.03))
  if len(candidates) == 0:
    candidates = np.argwhere(lung)
  cu, cv = f.u[candidates[:, 0], candidates[:, 1]], f.v[candidates[:, 0], candidates[:, 1]]
  weight = np.exp(2.5 * cu + 3.0 * np.abs(cv))
  k = rng.choice(len(candidates), p=weight / weight.sum())
  return cu[k], cv[k]


def _covid(rng, f, hu, lungs):
  size = f.size
  mask = np.zeros((size, size), np.uint8)
  sides = [0, 1] if rng.random() < 0.7 else [int(rng.integers(2))]
  for side in sides:
    lung = lungs[side]
    if not lung.any():
      continue
    depth = f.depth(lung)
    patch = np.zeros_like(lung)
    outline = smooth_noise(rng, size, 0.035 * size)
    for _ in range(int(rng.integers(1, 4))):
      cu, cv = _border_seed(rng, f, lung, depth)
      r = rng.uniform(0.14, 0.26)
      d = np.sqrt((f.u - cu) ** 2 + (f.v - cv) ** 2) / r
      # Irregular outline, hugging the pleura (subpleural).
      band = (0.8 * r + 0.05) * (1 + 0.3 * outline)
      patch |= ((d + 0.4 * outline * np.clip(d, 0, 1)) < 1.0) & (depth < band)
    patch &= lung
    patch = smooth_region(patch, 0.006 * size) & lung
    if not patch.any():
      continue
    texture = smooth_noise(rng, size, 0.012 * size)
    level = rng.uniform(-600, -400)
    ggo = np.clip(level + 40 * texture, GGO_RANGE[0] + 20, GGO_RANGE[1] - 20)
    # Ground glass: hazy; vessels stay visible through it, at lower contrast.
    hu[patch] = np.maximum(ggo[patch], ggo[patch] + 0.35 * (hu[patch] - ggo[patch]))
    mask[patch] = 1
    if rng.random() < 0.6:  # consolidation: the denser core of a patch
      inner = f.depth(patch)
      core = patch & (inner + 0.012 * outline > rng.uniform(0.02, 0.045))
      core = smooth_region(core, 0.006 * size) & patch
      cons = np.clip(rng.uniform(-60, 20) + 15 * texture, CONSOLIDATION_RANGE[0] + 15,
                     CONSOLIDATION_RANGE[1] - 15)
      hu[core] = cons[core]
      mask[core] = 2
  if not mask.any():  # tiny lungs or images: guarantee a visible lesion
    lung = lungs[int(np.argmax(lungs.sum((1, 2))))]
    depth = f.depth(lung)
    cu, cv = _border_seed(rng, f, lung, depth)
    patch = lung & f.disk(cu, cv, max(0.12, 3 / f.px_per_unit))
    hu[patch] = np.maximum(hu[patch], rng.uniform(-620, -420))
    mask[patch] = 1
  return mask


def _other(rng, f, hu, lungs):
  """Nodules, a mass or a pleural effusion: abnormal, but not COVID lesions."""
  size = f.size
  choice = rng.choice(['nodules', 'mass', 'effusion'], p=[0.4, 0.25, 0.35])
  if choice == 'effusion':
    sides = [0, 1] if rng.random() < 0.35 else [int(rng.integers(2))]
    for side in sides:
      lung = lungs[side]
      if not lung.any():
        continue
      # Dependent crescent: thickest at the lowest (posterior) part of the lung.
      to_wall = f.depth(lung)
      lu = f.u[lung]
      lo, hi = np.quantile(lu, 0.35), lu.max()
      thickness = rng.uniform(0.08, 0.2)
      weight = np.clip((f.u - lo) / (hi - lo + 1e-6), 0, 1) ** 0.8
      fluid = lung & (to_wall < thickness * weight)
      fluid = smooth_region(fluid, 0.008 * size) & lung
      hu[fluid] = rng.uniform(2, 20) + rng.normal(0, 6, int(fluid.sum()))
      # Compressed lung just above the fluid is slightly denser.
      rim = lung & ~fluid & (to_wall < thickness * weight + 0.02) & (weight > 0)
      hu[rim] = np.maximum(hu[rim], LUNG_HU + 120)
    return
  any_lung = lungs.any(0)
  depth = f.depth(any_lung)
  count, radius = ((int(rng.integers(1, 5)), (0.03, 0.065)) if choice == 'nodules'
                   else (1, (0.09, 0.16)))
  outline = smooth_noise(rng, size, 0.02 * size)
  for _ in range(count):
    r = rng.uniform(*radius)
    points = np.argwhere(depth > 0.4 * r)
    if len(points) == 0:
      points = np.argwhere(any_lung)
    py, px = points[rng.integers(len(points))]
    d = np.sqrt((f.u - f.u[py, px]) ** 2 + (f.v - f.v[py, px]) ** 2) / r
    lobulation = 0.25 if choice == 'mass' else 0.08
    blob = ((d + lobulation * outline) < 1.0) & any_lung
    hu[blob] = rng.uniform(20, 55) + rng.normal(0, 8, int(blob.sum()))
    if choice == 'nodules' and rng.random() < 0.15:  # a calcified granuloma
      hu[blob & (d < 0.5)] = 400.0


# ----------------------------------------------------------------------------
# Public API.


def generate_slice(rng: np.random.Generator, kind: str, size: int, *,
                   patient: dict | None = None, level: float | None = None,
                   return_lungs: bool = False):
  """One axial slice of class `kind` ('covid19', 'normal' or 'other').

  Returns (hu float32 (S, S), mask uint8 (S, S)) where mask is 0 background,
  1 ground glass, 2 consolidation (all zero unless `kind == 'covid19'`);
  with `return_lungs`, also the lung mask (bool (S, S)), which contains every
  lesion. `patient` (from `sample_patient`) fixes the anatomy shared by
  slices of one patient (drawn from `rng` when None); `level` in [0, 1] is
  the slice position from apex to base (drawn when None).
  """
  if kind not in KINDS:
    raise ValueError(f'kind must be one of {KINDS}, got {kind!r}')
  size = int(size)
  if size < 16:
    raise ValueError(f'size must be at least 16 pixels, got {size}')
  patient = sample_patient(rng) if patient is None else patient
  z = float(rng.uniform(0.15, 0.85) if level is None else np.clip(level, 0, 1))
  hu, lungs, f = draw_anatomy(rng, size, patient, z)
  mask = np.zeros((size, size), np.uint8)
  if kind == 'covid19':
    mask = _covid(rng, f, hu, lungs)
  elif kind == 'other':
    _other(rng, f, hu, lungs)
  # Partial-volume blur and correlated CT noise.
  hu = ndimage.gaussian_filter(hu, 0.4)
  noise = smooth_noise(rng, size, 0.5) * NOISE_HU
  hu = np.clip(hu + noise, -1024, 3071).astype(np.float32)
  mask[~lungs.any(0)] = 0  # lesions never leave the lungs
  if return_lungs:
    return hu, mask, lungs.any(0)
  return hu, mask


def _patients(rng, num_examples):
  """Group slice indices into synthetic patients of 1-4 slices."""
  groups, start = [], 0
  while start < num_examples:
    n = int(min(rng.integers(1, 5), num_examples - start))
    groups.append(range(start, start + n))
    start += n
  return groups


def generate_split(seed: int, num_examples: int, size: int, split: str,
                   window=LUNG_WINDOW):
  """Yield (key, example) in the shared feature spec (`features.make_example`).

  Patients have 1-4 slices (shared anatomy, different levels) and ids
  `synth-SPLIT-NNNNN`; each split draws from its own seed stream, so no
  patient appears in two splits.

  train: heterogeneous cohorts like the real data. `synthetic_seg` (~40% of
  patients): slices with lesion masks (60% COVID, 40% lesion-free normal or
  other pathology), ~30% of these patients without a class label.
  `synthetic_cls` (~60%): all three classes with labels but no masks; ~15%
  of its non-COVID patients only carry the set label {normal, other}
  (label -1).
  validation/test (`synthetic_ct`): every slice has an exact label and a mask
  (normal and other have a genuinely empty lesion mask), classes about
  1/2 COVID, 1/4 normal, 1/4 other.
  """
  if split not in SPLIT_OFFSETS:
    raise ValueError(f'split must be one of {tuple(SPLIT_OFFSETS)}, got {split!r}')
  rng = np.random.default_rng([int(seed), SPLIT_OFFSETS[split]])
  spacing = (FIELD_OF_VIEW_MM / size,) * 2
  for p, slices in enumerate(_patients(rng, int(num_examples))):
    patient_id = f'synth-{split}-{p:05d}'
    anatomy = sample_patient(rng)
    with_label, with_mask, as_set = True, True, False
    if split == 'train':
      cohort = 'synthetic_seg' if rng.random() < 0.4 else 'synthetic_cls'
      if cohort == 'synthetic_seg':
        # Lesion-free slices (empty masks) too, or a model never learns that
        # nodules, effusions and vessels are not COVID lesions.
        kind = KINDS[int(rng.choice(3, p=[0.6, 0.2, 0.2]))]
        with_label = rng.random() >= 0.3
      else:
        kind, with_mask = KINDS[int(rng.integers(3))], False
        as_set = kind != 'covid19' and rng.random() < 0.15
    else:
      cohort, kind = 'synthetic_ct', KINDS[int(rng.choice(3, p=[0.5, 0.25, 0.25]))]
    for i in slices:
      hu, mask = generate_slice(rng, kind, size, patient=anatomy)
      label = KINDS.index(kind) if with_label and not as_set else None
      example = features.make_example(
          window_hu(hu, *window), mask if with_mask else None, label,
          features.NON_COVID if as_set else None,
          patient_id=patient_id, source=cohort, spacing=spacing)
      yield f'{split}-{i:06d}', example
