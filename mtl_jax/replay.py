"""A checkpoint's recorded preprocessing, replayed on new input for `predict`.

Training wrote every preprocessing choice into the checkpoint
(`preprocess.settings_from_config`); this turns that record back into the
steps a new slice goes through (render, square pad, resize, lung crop,
intensity standardisation) and the way back from model-space probabilities
to the slice's own size.
"""

from __future__ import annotations

import numpy as np

from mtl_jax.data import preprocess
from mtl_jax.lesion_threshold import LESION_THRESHOLD


class InputReplay:
  """Model inputs from slices, and slice-sized masks from model outputs."""

  def __init__(self, prep: dict):
    self.image_size = int(prep['image_size'])
    self.window = tuple(float(v) for v in prep['window_hu'])
    self.model_kind = prep.get('input_kind', 'hu')
    self.standardization = prep.get('standardize', {'mode': 'none'})
    self.lung_crop = bool(prep.get('lung_crop'))

  def renderer(self, intensity: str):
    """(slice -> [0, 1] image, description, warning or None)."""
    if intensity == 'hu' and self.model_kind == 'hu':
      return (lambda s: preprocess.window_hu(s, *self.window),
              f'HU clipped to the window {list(self.window)} and scaled to [0, 1]', None)
    if intensity == 'hu':
      w = self.window
      return (lambda s: np.round(preprocess.window_hu(s, *w) * 255.0) / 255.0,
              f'HU rendered as an 8-bit image with the lung window {list(w)} HU '
              '(the model was trained on 8-bit renderings), then scaled to [0, 1]',
              None)
    warning = None
    if self.model_kind == 'hu':
      warning = ('8-bit input to a model trained on HU (lung window): the '
                 "rendering's own window is unknown, results are less reliable")
    return preprocess.scale_8bit, '8-bit values / 255', warning

  def model_input(self, image01: np.ndarray) -> tuple:
    """(model input, lung box or None): square pad, resize, lung crop if trained so."""
    image = preprocess.square_image(image01, self.image_size)
    box = preprocess.lung_box(image) if self.lung_crop else None
    if box is not None:
      image = np.clip(preprocess.crop_to_box(image, box, self.image_size), 0.0, 1.0)
    return image, box

  def standardizer(self, study, model_input):
    """(model input -> standardised input, description), replaying training.

    'per_source' training standardised each source by its own foreground
    statistics; a study is its own source here (up to 64 evenly spaced slices).
    """
    mode = self.standardization.get('mode', 'none')
    if mode == 'none':
      return (lambda x: x), 'no intensity standardisation'
    reference = tuple(self.standardization['reference'])
    if mode == 'per_image':
      return (lambda x: preprocess.standardize(x, preprocess.foreground_stats(x),
                                               reference),
              f'each slice standardised to foreground mean/std {list(reference)}')
    picks = np.unique(np.linspace(0, study.num_slices - 1,
                                  min(study.num_slices, 64)).round().astype(int))
    moments = np.sum([preprocess.foreground_moments(model_input(k)[0]) for k in picks],
                     axis=0)
    stats = preprocess.stats_from_moments(*moments)
    return (lambda x: preprocess.standardize(x, stats, reference),
            f'study standardised from foreground mean/std {[round(v, 4) for v in stats]} '
            f'to {list(reference)}')

  def back(self, seg: np.ndarray, box, h: int, w: int):
    """Model-space probabilities -> (lesion probability, labels) at (h, w).

    `seg` is (S, S) sigmoid or (S, S, C) softmax probabilities; a lung crop's
    output first goes back into its box (background outside).
    """
    if box is not None:
      fill = np.eye(seg.shape[-1])[0] if seg.ndim == 3 else 0.0
      seg = preprocess.paste_from_box(seg, box, self.image_size, fill)
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    chans = seg[..., None] if seg.ndim == 2 else seg
    up = np.stack([preprocess.resize_image(chans[..., c], side)[top:top + h,
                                                                left:left + w]
                   for c in range(chans.shape[-1])], axis=-1)
    if seg.ndim == 2:
      prob = up[..., 0]
      return prob, (prob > LESION_THRESHOLD).astype(np.uint8)
    return 1.0 - up[..., 0], np.argmax(up, axis=-1).astype(np.uint8)
