"""An exported model: one folder that predicts with no training run behind it.

What a radiology user runs (nnU-Net's and TotalSegmentator's trained weights):
the parameters and batch statistics only (no optimizer state), stored at a
reduced float precision, with the checkpoint's whole record beside them (its
config, the preprocessing that `predict` replays, the out-of-distribution
references), the validation figures measured on the exported weights
themselves, and a model card. `checkpointing.read_meta` and `runtime.load`
read such a folder as they read a workdir, so `predict` and `evaluate` take
either; `mtl-jax export-model` writes one (`export`), and the model that
ships with the package lives in `SHIPPED` (docs/predict.md says how it is
made and when it changes).

  FOLDER/model.json          the checkpoint record, plus `export` (from where,
                             which step, the stored dtype)
  FOLDER/variables.msgpack   {'params', 'batch_stats'} (flax.serialization)
  FOLDER/eval_validation.json  `evaluate` on the exported weights
  FOLDER/MODEL_CARD.md       what it was trained on, how good it is, its limits
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile

import numpy as np
from flax import serialization

from mtl_jax import jsonio
from mtl_jax.errors import CheckpointError

META_FILE = 'model.json'
VARIABLES_FILE = 'variables.msgpack'
CARD_FILE = 'MODEL_CARD.md'
# The model shipped inside the package (mtl_jax/assets/model), if any.
SHIPPED = pathlib.Path(__file__).resolve().parent / 'assets' / 'model'
STORED_DTYPES = ('float16', 'bfloat16', 'float32')
MAX_SHIPPED_MB = 12.0


def is_exported(path) -> bool:
  return os.path.isfile(os.path.join(os.fspath(path), META_FILE))


def shipped() -> str | None:
  """The shipped model's folder, or None when this install carries none."""
  return str(SHIPPED) if is_exported(SHIPPED) else None


def read_meta(path) -> dict:
  with open(os.path.join(os.fspath(path), META_FILE), encoding='utf-8') as f:
    return json.load(f)


def read_variables(path, abstract_variables: dict) -> dict:
  """The stored variables, as float32 numpy arrays shaped like
  `abstract_variables` (a mismatch is a one-line CheckpointError)."""
  with open(os.path.join(os.fspath(path), VARIABLES_FILE), 'rb') as f:
    stored = serialization.msgpack_restore(f.read())
  template = _zeros_like(abstract_variables)
  try:
    variables = serialization.from_state_dict(template, stored)
  except (ValueError, KeyError) as e:
    raise CheckpointError(f'{path}: its variables do not fit the model its record '
                          f'describes ({e})') from None
  for (got, want) in zip(_leaves(variables), _leaves(template)):
    if np.shape(got) != np.shape(want):
      raise CheckpointError(f'{path}: a stored array has shape {np.shape(got)}, the '
                            f'model needs {np.shape(want)}')
  return _cast(variables, np.float32)


def export(loaded, dest, dtype: str = 'float16', validation: dict | None = None,
           card: str = '') -> str:
  """Write `loaded` (a `runtime.Loaded`) as an exported model in `dest`,
  atomically (a staged folder renamed into place). Returns `dest`."""
  if dtype not in STORED_DTYPES:
    raise CheckpointError(f'--dtype {dtype}: choose one of {", ".join(STORED_DTYPES)}')
  dest = os.path.abspath(os.fspath(dest))
  if os.path.isdir(dest) and os.listdir(dest) and not is_exported(dest):
    raise CheckpointError(f'{dest} exists, is not empty and holds no exported model; '
                          'choose another --output')
  parent = os.path.dirname(dest)
  os.makedirs(parent, exist_ok=True)
  stage = tempfile.mkdtemp(prefix='.export-', dir=parent)
  try:
    stored = _cast(_to_numpy(loaded.variables), _numpy_dtype(dtype))
    with open(os.path.join(stage, VARIABLES_FILE), 'wb') as f:
      f.write(serialization.msgpack_serialize(serialization.to_state_dict(stored)))
    meta = dict(loaded.meta, export={'from': os.path.abspath(loaded.path),
                                     'which': loaded.which, 'step': loaded.step,
                                     'dtype': dtype})
    jsonio.write_json(os.path.join(stage, META_FILE), meta, sort_keys=True)
    if validation is not None:
      jsonio.write_json(os.path.join(stage, 'eval_validation.json'), validation,
                        sort_keys=True)
    if card:
      pathlib.Path(stage, CARD_FILE).write_text(card, encoding='utf-8')
    jsonio.replace_dir(stage, dest)
  except BaseException:
    shutil.rmtree(stage, ignore_errors=True)
    raise
  return dest


def size_mb(path) -> float:
  return sum(p.stat().st_size for p in pathlib.Path(path).rglob('*') if p.is_file()) / 2**20


def _numpy_dtype(name: str):
  if name == 'bfloat16':
    import ml_dtypes  # pylint: disable=g-import-not-at-top  (a jax dependency)
    return ml_dtypes.bfloat16
  return np.dtype(name)


def _to_numpy(tree):
  return {k: _to_numpy(v) if hasattr(v, 'items') else np.asarray(v) for k, v in tree.items()}


def _cast(tree, dtype):
  """Floating arrays to `dtype`; others (counters) as they are."""
  out = {}
  for key, value in tree.items():
    if hasattr(value, 'items'):
      out[key] = _cast(value, dtype)
    else:
      value = np.asarray(value)
      floating = value.dtype.kind == 'f' or str(value.dtype) == 'bfloat16'
      out[key] = value.astype(dtype) if floating else value
  return out


def _zeros_like(abstract):
  return {k: _zeros_like(v) if hasattr(v, 'items') else np.zeros(v.shape, v.dtype)
          for k, v in abstract.items()}


def _leaves(tree):
  for key in sorted(tree):
    value = tree[key]
    if hasattr(value, 'items'):
      yield from _leaves(value)
    else:
      yield value
