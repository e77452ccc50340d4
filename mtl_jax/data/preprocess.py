"""Preprocessing shared by builders, training and prediction.

One record travels with the data: a builder writes what it did to each slice
(`rendering_record`: HU window, input kinds, stored size) into the dataset's
metadata; training checks its config against it and stores it, with its own
choices, in every checkpoint (`settings`); `mtl-jax predict` replays that
(`mtl_jax/replay.py`), so evaluation and prediction see what training saw.
"""

from __future__ import annotations

import numpy as np

LUNG_WINDOW = (-1000.0, 400.0)  # HU, the default rendering of CT volumes
RENDERING = ('HU volumes: clipped to window_hu and scaled to [0, 1]; 8-bit slices: '
             'value / 255; then square-padded with 0 (centred), resized bilinearly '
             'to image_size, clipped to [0, 1]')


def window_hu(hu, low: float = LUNG_WINDOW[0], high: float = LUNG_WINDOW[1]) -> np.ndarray:
  """Clip Hounsfield units to a window (default: lung window) and scale to [0, 1]."""
  hu = np.asarray(hu, np.float32)
  return (np.clip(hu, low, high) - low) / (high - low)


def rendering_record(window, image_size: int, input_kinds) -> dict:
  """What a dataset builder did to every slice, for the dataset's metadata.

  `input_kinds`: which of 'hu' (windowed CT numbers) and '8bit' (renderings
  scaled by 1/255) the built slices came from.
  """
  return {'window_hu': [float(v) for v in window], 'image_size': int(image_size),
          'input_kinds': sorted(set(input_kinds)), 'input_range': [0.0, 1.0],
          'rendering': RENDERING}


def settings_from_config(config, source_stats: dict | None = None,
                         built: dict | None = None) -> dict:
  """The preprocessing a model was trained with, as JSON for its checkpoint.

  `built` ({source: rendering_record}) is what the builders recorded; the
  window comes from there (`pipeline.check_built` made sure the config
  agrees). `source_stats` ({source: [mean, std]}) is the table per-source
  standardisation used; prediction standardises a study by its own statistics.
  """
  windows = {tuple(r['window_hu']) for r in (built or {}).values() if r}
  window = windows.pop() if len(windows) == 1 else tuple(config.data.window_hu)
  return {
      'image_size': int(config.data.image_size),
      'input_kind': str(config.data.input_kind),
      'window_hu': [float(v) for v in window],
      'built': built or {},
      'input_range': [0.0, 1.0],
      'sources': {name: float(w) for name, w in config.data.sources.items()},
      'lung_crop': ({'margin': LUNG_CROP_MARGIN, 'method': 'square around dark '
                     'regions enclosed by the body (Otsu), per slice'}
                    if config.data.lung_crop else None),
      'standardize': {
          'mode': str(config.data.standardize),
          'reference': [float(v) for v in config.data.standardize_reference],
          'foreground_above': FOREGROUND,
          'source_stats': source_stats or {},
      },
  }


# Intensity standardisation. Each 8-bit source renders CT with its own window,
# so a classifier can tell sources apart by brightness alone. Standardising
# maps a group of pixels (a source, a study or one image) to a common mean and
# spread, measured over the foreground only: padding, blanked regions and the
# air outside the body are all near 0 and would otherwise dominate.
STANDARDIZE_MODES = ('none', 'per_source', 'per_image')
FOREGROUND = 0.02


def foreground_moments(images) -> tuple:
  """(count, sum, sum of squares) of foreground pixels, to pool over images."""
  values = np.asarray(images, np.float64)
  values = values[values > FOREGROUND]
  return values.size, float(values.sum()), float(np.square(values).sum())


def stats_from_moments(count, total, squares) -> tuple:
  """(mean, std) from pooled moments; (0.5, 0.25) if nothing is foreground."""
  if count == 0:
    return 0.5, 0.25
  mean = total / count
  return float(mean), float(max(np.sqrt(max(squares / count - mean ** 2, 0.0)), 1e-3))


def foreground_stats(images) -> tuple:
  """(mean, std) over the foreground pixels of one image or a stack."""
  return stats_from_moments(*foreground_moments(images))


def standardize(image, stats, reference) -> np.ndarray:
  """Map foreground (mean, std) `stats` onto `reference`; background stays 0.

  The result is clipped to [0, 1], the range every head and loss expects;
  foreground stays above `FOREGROUND`, so it is still foreground afterwards.
  """
  image = np.asarray(image, np.float32)
  (mean, std), (ref_mean, ref_std) = stats, reference
  out = np.clip((image - mean) * (ref_std / std) + ref_mean, 2 * FOREGROUND, 1.0)
  return np.where(image > FOREGROUND, out, np.clip(image, 0.0, 1.0)).astype(np.float32)


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


def square_image(image01, size: int) -> np.ndarray:
  """A [0, 1] image (or soft mask) as the model's size x size input: padded to a
  square, resized, clipped. The builders and the predictor both call it, so a
  slice at prediction goes through the geometry it was trained on."""
  return np.clip(resize_image(square_pad(image01), size), 0.0, 1.0)


def resize_mask(mask, size: int) -> np.ndarray:
  """Nearest-neighbour resize of a 2-D label mask (labels never blend)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  mask = np.asarray(mask, np.uint8)
  if mask.shape == (size, size):
    return mask.copy()
  return np.asarray(Image.fromarray(mask).resize((size, size),
                                                 Image.Resampling.NEAREST))


# Lung crop. Sources frame the chest differently (whole body with table, tight
# crops, paper screenshots); cropping each slice to a square around its lungs
# and resizing shows the model the lungs at one scale. The box is found on the
# [0, 1] slice itself, so it works for HU windows and 8-bit renderings alike.
LUNG_CROP_MARGIN = 0.05  # of the slice side, added around the lungs' box
_MIN_LUNG_FRACTION = 0.03


def _otsu(values: np.ndarray) -> float:
  """Otsu's threshold of values in [0, 1] (256 bins)."""
  hist, edges = np.histogram(values, bins=256, range=(0.0, 1.0))
  centers = (edges[:-1] + edges[1:]) / 2
  weight = np.cumsum(hist)
  mean = np.cumsum(hist * centers)
  total, total_mean = weight[-1], mean[-1]
  with np.errstate(divide='ignore', invalid='ignore'):
    between = (total_mean * weight - mean * total) ** 2 / (weight * (total - weight))
  return float(centers[np.nanargmax(between[:-1])])


def lung_box(image01) -> tuple | None:
  """(top, left, side): a square around the lungs of a [0, 1] slice, or None.

  Dark regions (below Otsu's threshold) enclosed by the largest bright
  component (the body), not touching the border, are the lungs. A slice whose
  outside is blanked (only the lungs shown) has no enclosing body: there the
  foreground itself is the box. None: nothing found, use the slice whole.
  """
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  image = ndimage.uniform_filter(np.asarray(image01, np.float32), 3)
  size = image.shape[0]
  foreground = image > FOREGROUND
  if foreground.mean() < _MIN_LUNG_FRACTION:
    return None
  bright = image > _otsu(image[foreground])
  labels, count = ndimage.label(bright)
  if count == 0:
    return None
  body = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
  dark = ndimage.binary_fill_holes(body) & ~bright
  labels, count = ndimage.label(dark)
  border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
  lungs = np.isin(labels, np.setdiff1d(np.arange(1, count + 1), border))
  region = lungs if lungs.mean() >= _MIN_LUNG_FRACTION else foreground
  rows, cols = np.nonzero(region)
  if rows.size == 0:
    return None
  margin = LUNG_CROP_MARGIN * size
  side = int(np.ceil(max(rows.max() - rows.min(), cols.max() - cols.min()) + 1 + 2 * margin))
  side = min(max(side, size // 4), size)
  center_r, center_c = (rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2
  top = int(np.clip(round(center_r - side / 2), 0, size - side))
  left = int(np.clip(round(center_c - side / 2), 0, size - side))
  return top, left, side


def crop_to_box(image, box, size: int, is_mask: bool = False) -> np.ndarray:
  """The box's content resized to (size, size); masks nearest-neighbour."""
  top, left, side = box
  patch = np.asarray(image)[top:top + side, left:left + side]
  return resize_mask(patch, size) if is_mask else resize_image(patch, size)


def paste_from_box(patch, box, size: int, fill=0.0) -> np.ndarray:
  """Inverse of `crop_to_box` for a probability map (H, W) or (H, W, C).

  Outside the box gets `fill` (per channel for (H, W, C): e.g. one-hot
  background for softmax probabilities).
  """
  top, left, side = box
  canvas = np.zeros((size, size) + np.shape(patch)[2:], np.float32)
  canvas[...] = fill
  chans = np.asarray(patch, np.float32).reshape(patch.shape[0], patch.shape[1], -1)
  back = np.stack([resize_image(chans[..., c], side) for c in range(chans.shape[-1])], -1)
  canvas.reshape(size, size, -1)[top:top + side, left:left + side] = back
  return canvas
