"""Each evaluation's figures, one JSON line per evaluation: WORKDIR/validation_history.jsonl.

Curves, seed comparisons and the ablation table read this file, so they need
neither TensorBoard nor its event reader. A killed run can leave a torn last
line (skipped), and a resumed run re-evaluates steps it replays (the newest
line for a step wins). Runs that predate the file are read from the scalar
lines of their WORKDIR/mtl-jax.log.
"""

from __future__ import annotations

import json
import os
import re

from mtl_jax import logs

FILE = 'validation_history.jsonl'
_LOG_LINE = re.compile(r'\[(\d+)\] (validation/\S+=.*)$')


def append(workdir: str, step: int, scalars: dict):
  """Add one evaluation ({'validation/dice': 0.7, ...}) as a line."""
  line = json.dumps({'step': int(step), **{k: float(v) for k, v in scalars.items()}})
  with open(os.path.join(workdir, FILE), 'a', encoding='utf-8') as f:
    f.write(line + '\n')
    f.flush()
    os.fsync(f.fileno())


def read(workdir: str) -> dict:
  """{step: {metric: value}} for every evaluation the run made, oldest first."""
  path = os.path.join(workdir, FILE)
  rows = _read_jsonl(path) if os.path.exists(path) else _read_log(
      os.path.join(workdir, logs.LOG_FILE))
  return dict(sorted(rows.items()))


def _read_jsonl(path: str) -> dict:
  rows = {}
  with open(path, encoding='utf-8') as f:
    for line in f:
      try:
        row = json.loads(line)
      except json.JSONDecodeError:  # a torn last line of a killed run
        continue
      step = int(row.pop('step'))
      rows[step] = row
  return rows


def _read_log(path: str) -> dict:
  rows = {}
  if not os.path.exists(path):
    return rows
  with open(path, encoding='utf-8', errors='replace') as f:
    for line in f:
      match = _LOG_LINE.search(line.rstrip())
      if not match:
        continue
      values = {}
      for item in match.group(2).split(', '):
        key, _, value = item.partition('=')
        try:
          values[key] = float(value)
        except ValueError:
          continue
      rows[int(match.group(1))] = values
  return rows
