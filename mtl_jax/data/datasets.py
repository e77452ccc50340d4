"""Reading built datasets: one split of `DATA_DIR/NAME/SIZE/VERSION`, by folder.

Every dataset lives at `DATA_DIR/NAME/CONFIG/VERSION` in array_record format
and is read through `tfds.builder_from_directory(...).as_data_source()`, so
reading needs neither TensorFlow nor the builder code: building lives beside
the builders (`tfds_builders/registry.py`, `mtl-jax build-data`).
"""

from __future__ import annotations

import os

import tensorflow_datasets as tfds

from mtl_jax.data import features, preprocess
from mtl_jax.errors import DatasetNotFoundError


def _config_dir(name: str, data_dir: str, image_size: int) -> str:
  return os.path.join(data_dir, name, str(image_size))


def builder_dir(name: str, data_dir: str, image_size: int,
                version: str | None = None) -> str | None:
  """The directory of `version` (default: the newest built), or None."""
  config_dir = _config_dir(name, data_dir, image_size)
  if not os.path.isdir(config_dir):
    return None
  versions = [v for v in os.listdir(config_dir)
              if os.path.exists(os.path.join(config_dir, v, 'dataset_info.json'))
              and (version is None or v == version)]
  if not versions:
    return None
  newest = max(versions, key=lambda v: tuple(int(p) for p in v.split('.')))
  return os.path.join(config_dir, newest)


def built_record(path: str) -> dict:
  """The preprocessing record a builder wrote (`preprocess.rendering_record`).

  Datasets built before builders wrote one were rendered with the default
  lung window; their input kinds are unknown (None).
  """
  metadata = tfds.builder_from_directory(path).info.metadata or {}
  soft = bool((metadata.get('options') or {}).get('use_pseudo_masks'))
  record = metadata.get('preprocessing')
  if record:
    return dict(record, soft_masks=soft)
  return {'window_hu': list(preprocess.LUNG_WINDOW), 'input_kinds': None,
          'soft_masks': soft, 'legacy': 'built before datasets recorded their preprocessing'}


class DecodedSource:
  """Random access to one split, decoded to model inputs (grain-compatible)."""

  def __init__(self, path: str, split: str):
    self.path, self.split = path, split
    self._source = tfds.builder_from_directory(path).as_data_source(split)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    return features.decode_example(self._source[index])

  def __repr__(self):
    return f'DecodedSource({self.path!r}, {self.split!r}, n={len(self)})'


def load_split(name: str, split: str, data_dir: str, image_size: int) -> DecodedSource:
  """One built split, or a one-line DatasetNotFoundError saying how to build it."""
  path = builder_dir(name, data_dir, image_size)
  if path is None:
    raise DatasetNotFoundError(
        f'dataset {name!r} at {image_size}px is not built in '
        f'{os.path.abspath(data_dir)}; build it with: mtl-jax build-data {name} '
        f'--data_dir {data_dir} --image_size {image_size}')
  try:
    return DecodedSource(path, split)
  except (KeyError, ValueError):
    raise DatasetNotFoundError(f'dataset {name!r} in {path} has no split '
                               f'{split!r}') from None
