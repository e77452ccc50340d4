"""Training augmentations, applied identically to image and mask.

Geometry (flip, small rotation and scale, optional elastic deformation) moves
image, mask and pseudo-label soft mask together: image and soft mask with
linear interpolation, mask with nearest neighbour so labels stay labels. Intensity and contrast jitter touch the image
only. Each example's randomness comes from a generator seeded by its stream
index, so augmentation is reproducible and survives a resume.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage


@dataclasses.dataclass(frozen=True)
class Augmenter:
  """Random geometry and intensity changes of one example (call it with the
  example and its generator). Each field defaults to "off": the training
  values live in the config (`config.data`, `from_config`), in one place."""
  flip_prob: float = 0.0
  rotate_deg: float = 0.0
  scale_range: tuple = (1.0, 1.0)
  intensity_shift: float = 0.0
  contrast_range: tuple = (1.0, 1.0)
  elastic_prob: float = 0.0
  elastic_alpha: float = 8.0
  elastic_sigma: float = 6.0

  @classmethod
  def from_config(cls, data_config) -> 'Augmenter':
    """The augmenter `config.data` describes (its keys named like the fields)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{key: tuple(value) if isinstance(value, (list, tuple)) else value
                  for key, value in data_config.items() if key in fields})

  def __call__(self, example: dict, rng: np.random.Generator) -> dict:
    image, mask = example['image'], example['mask']
    soft = example.get('soft_mask')
    if rng.random() < self.flip_prob:
      image, mask = image[:, ::-1], mask[:, ::-1]
      soft = None if soft is None else soft[:, ::-1]
    if self.rotate_deg > 0 or self.scale_range != (1.0, 1.0):
      image, mask, soft = self._affine(image, mask, soft, rng)
    if self.elastic_prob > 0 and rng.random() < self.elastic_prob:
      image, mask, soft = self._elastic(image, mask, soft, rng)
    if self.intensity_shift > 0 or self.contrast_range != (1.0, 1.0):
      mean = image.mean()
      contrast = rng.uniform(*self.contrast_range)
      shift = rng.uniform(-self.intensity_shift, self.intensity_shift)
      image = np.clip((image - mean) * contrast + mean + shift, 0.0, 1.0)
    out = dict(example)
    out['image'] = np.ascontiguousarray(image, dtype=np.float32)
    out['mask'] = np.ascontiguousarray(mask, dtype=example['mask'].dtype)
    if soft is not None:
      out['soft_mask'] = np.ascontiguousarray(np.clip(soft, 0.0, 1.0), dtype=np.float32)
    return out

  def _affine(self, image, mask, soft, rng):
    angle = np.deg2rad(rng.uniform(-self.rotate_deg, self.rotate_deg))
    scale = rng.uniform(*self.scale_range)
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    matrix = np.array([[cos, -sin], [sin, cos]])
    center = (np.array(image.shape) - 1) / 2.0
    offset = center - matrix @ center
    # Outside the slice is air: the image's minimum, the mask's background.
    image = ndimage.affine_transform(image, matrix, offset, order=1,
                                     mode='constant', cval=float(image.min()))
    mask = ndimage.affine_transform(mask, matrix, offset, order=0,
                                    mode='constant', cval=0)
    if soft is not None:
      soft = ndimage.affine_transform(soft, matrix, offset, order=1,
                                      mode='constant', cval=0.0)
    return image, mask, soft

  def _elastic(self, image, mask, soft, rng):
    shape = image.shape
    dy, dx = (ndimage.gaussian_filter(rng.uniform(-1, 1, shape),
                                      self.elastic_sigma) * self.elastic_alpha
              for _ in range(2))
    yy, xx = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing='ij')
    coords = np.stack([yy + dy, xx + dx])
    image = ndimage.map_coordinates(image, coords, order=1, mode='nearest')
    mask = ndimage.map_coordinates(mask, coords, order=0, mode='nearest')
    if soft is not None:
      soft = ndimage.map_coordinates(soft, coords, order=1, mode='nearest')
    return image, mask, soft
