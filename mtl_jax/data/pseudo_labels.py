"""Self-training's pseudo labels, stored beside a built dataset and attached to it.

`mtl-jax pseudo-label` (mtl_jax/pseudo_label.py) runs a trained model, the
teacher, over a built dataset's training slices that have no ground-truth
mask and stores, per slice, its lesion probabilities and class
probabilities as one *label set*:

  DATA_DIR/NAME/SIZE/pseudo_labels/SET/train.npz    soft masks (uint8, 0..255),
                                                    which slices have one, class probs
  DATA_DIR/NAME/SIZE/pseudo_labels/SET/record.json  teacher, step, dataset, counts

Training with `config.data.pseudo_labels=SET` reads them as each example's
`soft_mask`/`has_soft_mask`, the feature the builders' model-made masks
use: only the pseudo-label loss sees them, and no metric ever counts them
(evaluation reads validation splits, which never get a label set). The class
probabilities are stored for inspection; training does not use them.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np

from mtl_jax import jsonio
from mtl_jax.errors import ConfigError

STORE = 'pseudo_labels'
SPLIT = 'train'  # pseudo labels are training targets only
ARRAYS = 'train.npz'
RECORD = 'record.json'


def set_dir(dataset_path: str, name: str) -> str:
  """Where label set `name` of the built dataset at `dataset_path` lives.

  `dataset_path` is the version folder (DATA_DIR/NAME/SIZE/VERSION); the
  store sits beside it so a rebuilt version can be told apart by its record.
  """
  return os.path.join(os.path.dirname(dataset_path), STORE, name)


def available(dataset_path: str) -> list:
  """The names of the finished label sets stored beside a built dataset."""
  store = os.path.join(os.path.dirname(dataset_path), STORE)
  if not os.path.isdir(store):
    return []
  return sorted(n for n in os.listdir(store)  # not a write in progress or left by a kill
                if not n.startswith('.') and '.tmp' not in n
                and os.path.exists(os.path.join(store, n, RECORD)))


def write(dataset_path: str, name: str, soft_masks: np.ndarray, has_soft_mask: np.ndarray,
          class_probs: np.ndarray | None, record: dict) -> str:
  """Write a label set atomically: into a temporary folder, then renamed.

  An existing set of that name is replaced only once the new one is
  complete (the old one is renamed aside first, then deleted).
  """
  if not name or os.sep in name or name.startswith('.'):
    raise ConfigError(f'pseudo-label set name {name!r}: use a plain folder name')
  soft_masks = np.asarray(soft_masks, np.float32)
  if soft_masks.ndim != 3 or not np.all(np.isfinite(soft_masks)) or (
      soft_masks.size and (soft_masks.min() < 0 or soft_masks.max() > 1)):
    raise ValueError(f'soft masks must be (N, H, W) probabilities, got {soft_masks.shape}')
  target = set_dir(dataset_path, name)
  os.makedirs(os.path.dirname(target), exist_ok=True)
  tmp = f'{target}.tmp{os.getpid()}'
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  try:
    arrays = {'soft_mask': np.round(soft_masks * 255.0).astype(np.uint8),
              'has_soft_mask': np.asarray(has_soft_mask, bool)}
    if class_probs is not None:
      arrays['class_probs'] = np.asarray(class_probs, np.float32)
    np.savez_compressed(os.path.join(tmp, ARRAYS), **arrays)
    jsonio.write_json(os.path.join(tmp, RECORD), dict(
        record, dataset=os.path.abspath(dataset_path), split=SPLIT,
        num_examples=int(len(soft_masks)), num_labelled=int(np.sum(has_soft_mask)),
        created=time.strftime('%Y-%m-%dT%H:%M:%S')), sort_keys=True)
    jsonio.replace_dir(tmp, target)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return target


def read_record(dataset_path: str, name: str) -> dict:
  """A label set's record: its teacher, when, and for which built dataset."""
  with open(os.path.join(set_dir(dataset_path, name), RECORD), encoding='utf-8') as f:
    return json.load(f)


class WithPseudoLabels:
  """A decoded split whose `soft_mask`/`has_soft_mask` come from a label set.

  Keeps the wrapped source's `path` and `split`, so split summaries (class
  groups, intensity moments: independent of soft masks) stay cached.
  """

  def __init__(self, source, name: str):
    self.source, self.name = source, name
    self.path, self.split = source.path, source.split
    folder = set_dir(source.path, name)
    record = read_record(source.path, name)
    with np.load(os.path.join(folder, ARRAYS)) as arrays:
      self.soft_mask, self.has_soft_mask = arrays['soft_mask'], arrays['has_soft_mask']
    if len(self.soft_mask) != len(source) or record.get('split') != source.split or (
        record.get('dataset') != os.path.abspath(source.path)) or (
        tuple(self.soft_mask.shape[1:]) != tuple(source[0]['image'].shape)):
      raise ConfigError(
          f'pseudo-label set {name!r} in {folder} was made for {record.get("num_examples")} '
          f'{record.get("split")} slices of {tuple(self.soft_mask.shape[1:])} px; '
          f'{source.path} has {len(source)} {source.split} slices: rerun mtl-jax pseudo-label')

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict:
    example = dict(self.source[index])
    if self.has_soft_mask[index]:
      example['soft_mask'] = self.soft_mask[index].astype(np.float32) / 255.0
      example['has_soft_mask'] = np.float32(1.0)
    return example

  def __repr__(self):
    return f'WithPseudoLabels({self.source!r}, {self.name!r})'
