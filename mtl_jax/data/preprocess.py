"""Preprocessing shared by builders, training and prediction.

Every choice here is recorded in the checkpoint (`settings_from_config`), so
that evaluation and `mtl-jax predict` replay exactly what training saw.
"""

from __future__ import annotations

import numpy as np


def window_hu(hu, low: float = -1000.0, high: float = 400.0) -> np.ndarray:
  """Clip Hounsfield units to a window (default: lung window) and scale to [0, 1]."""
  hu = np.asarray(hu, np.float32)
  return (np.clip(hu, low, high) - low) / (high - low)


def settings_from_config(config) -> dict:
  """The preprocessing a model was trained with, as JSON for its checkpoint."""
  return {
      'image_size': int(config.data.image_size),
      'input_kind': str(config.data.input_kind),
      'window_hu': [float(v) for v in config.data.window_hu],
      'input_range': [0.0, 1.0],
      'sources': {name: float(w) for name, w in config.data.sources.items()},
  }


# Geometry shared by every dataset builder: an input slice becomes a square
# `size` x `size` image in [0, 1] without distorting anatomy (pad, then resize).


def scale_8bit(img) -> np.ndarray:
  """An 8-bit rendering (0..255) as float32 in [0, 1]."""
  return np.clip(np.asarray(img, np.float32) / 255.0, 0.0, 1.0)


def square_pad(img, value=0) -> np.ndarray:
  """Pad the short side (both ends evenly) to a square, keeping the aspect ratio.

  Images pad with 0 (black: air after windowing/scaling), masks with 0 (background).
  """
  img = np.asarray(img)
  h, w = img.shape
  side = max(h, w)
  top, left = (side - h) // 2, (side - w) // 2
  return np.pad(img, ((top, side - h - top), (left, side - w - left)),
                constant_values=value)


def resize_image(img, size: int) -> np.ndarray:
  """Bilinear (antialiased when shrinking) resize of a 2-D float image."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  img = np.asarray(img, np.float32)
  if img.shape == (size, size):
    return img.copy()
  out = Image.fromarray(img, mode='F').resize((size, size), Image.Resampling.BILINEAR)
  return np.asarray(out, np.float32)


def resize_mask(mask, size: int) -> np.ndarray:
  """Nearest-neighbour resize of a 2-D label mask (labels never blend)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  mask = np.asarray(mask, np.uint8)
  if mask.shape == (size, size):
    return mask.copy()
  return np.asarray(Image.fromarray(mask).resize((size, size),
                                                 Image.Resampling.NEAREST))
