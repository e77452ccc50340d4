"""Building datasets: the known builders and `build_dataset` (`mtl-jax build-data`).

A new dataset is one package `tfds_builders/NAME/` whose `__init__` exports
`Builder` (a TFDS builder with one BuilderConfig per stored image size, named
by that size), and `DEFAULT_IMAGE_SIZE` where it differs from
`common.DEFAULT_IMAGE_SIZE`; nothing here changes. Reading a built
dataset needs none of this (`mtl_jax.data.datasets`).
"""

from __future__ import annotations

import collections
import importlib
import logging
import inspect
import os
import pkgutil
import shutil

import tensorflow_datasets as tfds

from mtl_jax.data import datasets, features
from mtl_jax.errors import DatasetNotFoundError
from . import common


def known_datasets() -> tuple:
  package = os.path.dirname(os.path.abspath(__file__))
  return tuple(sorted(m.name for m in pkgutil.iter_modules([package]) if m.ispkg))


def _check_name(name: str):
  if name not in known_datasets():
    raise DatasetNotFoundError(f'unknown dataset {name!r}; known datasets: '
                               f'{", ".join(known_datasets())}')


def _builder_module(name: str):
  _check_name(name)
  return importlib.import_module(f'{__package__}.{name}')


def build_dataset(name: str, data_dir: str, image_size: int | None = None,
                  **kwargs) -> str:
  """Build `name` at `image_size` into `data_dir` unless already built."""
  module = _builder_module(name)
  image_size = image_size or getattr(module, 'DEFAULT_IMAGE_SIZE', common.DEFAULT_IMAGE_SIZE)
  sizes = sorted(int(c.name) for c in module.Builder.BUILDER_CONFIGS)
  if image_size not in sizes:
    raise DatasetNotFoundError(
        f'{name} has no stored size {image_size}px; sizes: '
        f'{", ".join(map(str, sizes))} (--image_size). Another size needs a '
        f'BuilderConfig of that size in the builder (tfds_builders/common.py SIZES); '
        'the model resizes inputs to config.data.image_size in any case')
  existing = datasets.builder_dir(name, data_dir, image_size, str(module.Builder.VERSION))
  if existing:
    window = kwargs.get('window_hu')
    record = datasets.built_record(existing)
    if window is not None and [float(v) for v in window] != [float(v) for v in
                                                             record['window_hu']]:
      raise DatasetNotFoundError(
          f'{name} at {image_size}px in {data_dir} is built with window_hu '
          f'{record["window_hu"]}, not {list(window)}; build into another --data_dir')
    if bool(kwargs.get('use_pseudo_masks')) != record['soft_masks'] and (
        'use_pseudo_masks' in kwargs or record['soft_masks']):
      raise DatasetNotFoundError(
          f'{name} at {image_size}px in {data_dir} is built '
          f'{"with" if record["soft_masks"] else "without"} pseudo labels; build into '
          'another --data_dir')
    built_fold = int(tfds.builder_from_directory(existing).info.metadata.get('fold') or 0)
    if int(kwargs.get('fold') or 0) != built_fold:
      raise DatasetNotFoundError(
          f'{name} at {image_size}px in {data_dir} is built with fold {built_fold}; '
          'build another fold into another --data_dir')
    return existing
  if kwargs.get('fold'):
    if int(kwargs['fold']) < 0:
      raise DatasetNotFoundError(f'--fold {kwargs["fold"]}: give 0 or more')
    if 'fold' not in inspect.signature(module.Builder.__init__).parameters:
      raise DatasetNotFoundError(f'--fold: {name} has no cross-validation folds')
  manual_dir = kwargs.pop('manual_dir', None)
  builder = module.Builder(config=str(image_size), data_dir=data_dir,
                           file_format='array_record', **kwargs)
  logging.info('building %s/%d into %s', name, image_size, data_dir)
  before, existed = _snapshot(data_dir, name), os.path.isdir(data_dir)
  try:
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=manual_dir))
  except BaseException:
    _remove_new(data_dir, name, before)
    if not existed and os.path.isdir(data_dir) and not os.listdir(data_dir):
      os.rmdir(data_dir)
    raise
  path = datasets.builder_dir(name, data_dir, image_size)
  for split in builder.info.splits:
    source = tfds.builder_from_directory(path).as_data_source(split)
    patients = collections.Counter(
        features.decode_example(source[i])['patient_id'] for i in range(len(source)))
    print(f'{name}/{image_size} {split}: {len(source)} slices, '
          f'{len(patients)} patients')
  return path


def _snapshot(data_dir: str, name: str) -> set:
  """The entries of `data_dir` and every path under `data_dir/name`."""
  paths = {os.path.join(data_dir, n) for n in os.listdir(data_dir)} \
      if os.path.isdir(data_dir) else set()
  for root, dirs, files in os.walk(os.path.join(data_dir, name)):
    paths.update(os.path.join(root, n) for n in dirs + files)
  return paths


def _remove_new(data_dir: str, name: str, before: set):
  """Undo a failed build: remove what it created (tfds leaves `NAME/.config/`,
  `incomplete.*` and `downloads/` folders), keep everything that was there."""
  for path in sorted(_snapshot(data_dir, name) - before, key=len):
    if os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
      os.remove(path)


