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
      'window_hu': [float(v) for v in config.data.window_hu],
      'input_range': [0.0, 1.0],
      'sources': {name: float(w) for name, w in config.data.sources.items()},
  }
