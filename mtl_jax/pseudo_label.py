"""`mtl-jax pseudo-label`: a trained model (the teacher) labels a dataset's unmasked slices.

Self-training (teacher -> student): the teacher's lesion probabilities on
every training slice that has no ground-truth mask become a label set
beside the built dataset (`mtl_jax/data/pseudo_labels.py`); a student trained
with `--config.data.pseudo_labels=SET --config.loss.pseudo_weight=W` learns
from them through the pseudo-label loss, and may in turn be the next
round's teacher. Slices are fed exactly as the teacher was trained
(`pipeline.eval_batches`: its lung crop and standardisation), and the
probabilities are pasted back into the stored slice's geometry.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from mtl_jax import parallel
from mtl_jax import runtime as runtime_lib
from mtl_jax.data import datasets, pipeline, preprocess, pseudo_labels
from mtl_jax.errors import ConfigError


def run(*, workdir: str, dataset: str, data_dir: str, name: str | None = None,
        which: str = 'best', tta: bool = False, batch_size: int | None = None) -> str:
  """Label `dataset`'s training slices without masks; returns the set's folder."""
  loaded = runtime_lib.load(workdir, which)
  runtime = loaded.runtime
  if 'seg' not in runtime.tasks:
    raise ConfigError(f'{workdir}: the model has no segmentation task to make '
                      'pseudo labels with')
  config = runtime.config.copy_and_resolve_references()
  config.data.data_dir = data_dir
  source = datasets.load_split(dataset, pseudo_labels.SPLIT, data_dir,
                               config.data.image_size)
  _check_rendering(loaded.meta, datasets.built_record(source.path), source.path)
  stats = loaded.meta['preprocessing']['standardize'].get('source_stats') or {}
  if config.data.standardize == 'per_source' and dataset not in stats:
    raise ConfigError(f'{workdir} standardises per source and has no statistics for '
                      f'{dataset!r} (it knows {sorted(stats)})')
  batch_size = batch_size or config.eval.batch_size
  parallel.check_batch_size(batch_size, '--batch_size', num_devices=runtime.mesh.size)
  predict = runtime.predict_fn(tta=tta)
  soft, has_soft, class_probs = [], [], []
  offset = 0
  for batch in pipeline.eval_batches(config, pseudo_labels.SPLIT, batch_size, dataset,
                                     stats=stats):
    images = parallel.global_batch({'image': batch['image']}, runtime.mesh)['image']
    predictions = parallel.to_host(predict(loaded.variables, images))
    valid = batch['valid'] > 0
    for i in np.flatnonzero(valid):
      prob = np.asarray(predictions['seg_prob'][i], np.float32)
      if config.data.lung_crop:
        prob = _uncrop(prob, source[offset]['image'])
      soft.append(np.clip(prob, 0.0, 1.0))
      has_soft.append(batch['has_mask'][i] == 0)  # ground truth wins where it exists
      if 'cls_probs' in predictions:
        class_probs.append(np.asarray(predictions['cls_probs'][i], np.float32))
      offset += 1
  record = {'teacher': os.path.abspath(workdir), 'teacher_checkpoint': loaded.which,
            'teacher_step': loaded.step, 'tta': bool(tta),
            'confidence_note': 'probabilities as predicted; the student config chooses '
                               'which to trust (loss.pseudo_confidence)'}
  folder = pseudo_labels.write(source.path, name or _default_name(workdir),
                               np.stack(soft), np.asarray(has_soft),
                               np.stack(class_probs) if class_probs else None, record)
  logging.info('pseudo-labelled %d of %d %s slices of %s with %s (step %d): %s',
               int(np.sum(has_soft)), len(soft), pseudo_labels.SPLIT, dataset, workdir,
               loaded.step, folder)
  return folder


def _default_name(workdir: str) -> str:
  return os.path.basename(os.path.normpath(os.path.abspath(workdir)))


def _uncrop(prob, raw_image) -> np.ndarray:
  """A lung-cropped prediction pasted back into the stored slice's frame."""
  size = raw_image.shape[0]
  box = preprocess.lung_box(raw_image)
  return prob if box is None else preprocess.paste_from_box(prob, box, size)


def _check_rendering(meta: dict, built: dict, path: str):
  """The dataset must look like the teacher's training data: same window and kind."""
  trained = meta['preprocessing']
  kinds = built.get('input_kinds') or ['hu']
  if trained['input_kind'] not in kinds:
    raise ConfigError(f'{path} holds {kinds} slices; the teacher was trained on '
                      f'{trained["input_kind"]!r} slices')
  if 'hu' in kinds and [float(v) for v in built['window_hu']] != [
      float(v) for v in trained['window_hu']]:
    raise ConfigError(f'{path} was built with window {built["window_hu"]}; the teacher '
                      f'was trained with {trained["window_hu"]}')
