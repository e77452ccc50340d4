"""Strict JSON out: numpy values made plain, nan/inf as null, written atomically.

Every JSON file the tool writes (config, metrics, checkpoint metadata,
prediction reports) goes through here, so a reader never sees `NaN` (not
JSON) or a half-written file after a crash.
"""

from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np


def jsonable(value):
  """Python scalars/lists/dicts only; numpy values converted; nan and inf become None."""
  if isinstance(value, dict):
    return {str(k): jsonable(v) for k, v in value.items()}
  if isinstance(value, np.ndarray):
    return jsonable(value.tolist())
  if isinstance(value, (list, tuple)):
    return [jsonable(v) for v in value]
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def write_json(path, data: dict, sort_keys: bool = False):
  """Write `data` as strict JSON: a temporary file renamed over the target."""
  path = os.fspath(path)
  tmp = f'{path}.tmp{os.getpid()}'
  try:
    with open(tmp, 'w', encoding='utf-8') as f:
      json.dump(jsonable(data), f, indent=2, sort_keys=sort_keys)
      f.write('\n')
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def replace_dir(tmp, target):
  """Move the finished folder `tmp` to `target`, replacing any folder there
  only once the new one is complete (the old one is renamed aside first,
  then deleted): a reader sees the old folder or the new one, never half."""
  tmp, target = os.fspath(tmp), os.fspath(target)
  if os.path.exists(target):
    old = os.path.join(os.path.dirname(target),
                       f'.{os.path.basename(target)}.old-{os.getpid()}')
    os.rename(target, old)
    os.rename(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
  else:
    os.rename(tmp, target)
