"""orbax checkpoints: the latest N for resume, the best by a validation metric.

Each checkpoint holds the train state and a JSON `meta` item with the full
config, the preprocessing that produced the training inputs and the data
iterator position, so evaluation and prediction rebuild the exact model and
replay the exact preprocessing from the workdir alone. orbax writes to a
temporary directory and renames it into place, so a killed run never leaves a
half-written checkpoint behind.
"""

from __future__ import annotations

import json
import math
import os

import jax
import orbax.checkpoint as ocp

from mtl_jax.errors import CheckpointError, ConfigError

LATEST_DIR = 'checkpoints'
BEST_DIR = 'best'
# Config sections that change the parameter tree or what the model means.
ARCHITECTURE_KEYS = ('model', 'loss.weights', 'loss.uncertainty_weighting',
                     'data.image_size', 'data.window_hu')


def selection_value(results: dict, best_metric: str) -> float | None:
  """The figure that ranks checkpoints for `best`: one validation metric, or
  the mean of several joined by '+' (a multi-task model is chosen on all its
  tasks, e.g. 'dice+auc_covid'). A name may reach into per-source results:
  'by_source/covid_ct/auc_covid'. None when a value is undefined (nan).
  """
  values = []
  for name in best_metric.split('+'):
    value = results
    for key in name.strip().split('/'):
      if not isinstance(value, dict) or key not in value:
        raise ConfigError(f'train.best_metric={best_metric!r}: the validation results have '
                         f'no {name.strip()!r}')
      value = value[key]
    if value is None or not math.isfinite(float(value)):
      return None
    values.append(float(value))
  return sum(values) / len(values)


def _manager(directory, options):
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


class Checkpointer:
  """Two orbax managers over `workdir/checkpoints` and `workdir/best`."""

  def __init__(self, workdir: str, keep: int = 3, best_metric: str = 'dice',
               read_only: bool = False):
    self.best_metric = best_metric
    common = dict(create=not read_only, read_only=read_only,
                  enable_async_checkpointing=False)
    self.latest = _manager(os.path.join(workdir, LATEST_DIR),
                           ocp.CheckpointManagerOptions(max_to_keep=keep, **common))
    self.best = _manager(os.path.join(workdir, BEST_DIR),
                         ocp.CheckpointManagerOptions(
                             max_to_keep=1, best_mode='max',
                             best_fn=lambda m: m[best_metric], **common))

  def save_latest(self, step: int, state, meta: dict):
    self.latest.save(step, args=_save_args(state, meta), force=True)
    self.latest.wait_until_finished()

  def is_better(self, metrics: dict) -> bool:
    """Whether these metrics would replace the kept best checkpoint."""
    value = selection_value(metrics, self.best_metric)
    if value is None:
      return False
    best = _best_step(self.best)
    if best is None:
      return True
    kept_value = (self.best.metrics(best) or {}).get(self.best_metric)
    return kept_value is None or float(value) > float(kept_value)

  def save_if_best(self, step: int, state, meta: dict, metrics: dict):
    """Keep this checkpoint if its `best_metric` beats the kept one."""
    value = selection_value(metrics, self.best_metric)
    if value is None:
      return
    self.best.save(step, args=_save_args(state, meta),
                   metrics={self.best_metric: value}, force=True)
    self.best.wait_until_finished()

  def latest_step(self):
    return self.latest.latest_step()

  def kept_steps(self) -> list[int]:
    """Steps of the kept latest checkpoints, oldest first."""
    return sorted(self.latest.all_steps())

  def restore(self, abstract_state, which: str = 'latest', step: int | None = None):
    """(state, meta) from the latest checkpoint, the best one, or a given
    `step` among the kept latest ones (see `kept_steps`)."""
    manager = self.latest if which == 'latest' else self.best
    if step is None:
      step = manager.latest_step() if which == 'latest' else _best_step(manager)
    if step is None:
      raise CheckpointError(f'no {which} checkpoint in {manager.directory}')
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        meta=ocp.args.JsonRestore()))
    return restored['state'], restored['meta']

  def close(self):
    self.latest.close()
    self.best.close()


def _save_args(state, meta):
  return ocp.args.Composite(state=ocp.args.StandardSave(state),
                            meta=ocp.args.JsonSave(meta))


def _best_step(manager):
  return manager.best_step() if manager.all_steps() else None


def read_meta(workdir: str, which: str = 'best') -> tuple[dict, str]:
  """The meta JSON of a workdir's best (else latest) checkpoint, and its path.

  Reads the JSON file directly, so callers learn the config before building
  a model. Raises CheckpointError with one line when there is none.
  """
  order = (BEST_DIR, LATEST_DIR) if which == 'best' else (LATEST_DIR,)
  for sub in order:
    directory = os.path.join(workdir, sub)
    steps = sorted((int(d) for d in os.listdir(directory) if d.isdigit()),
                   reverse=True) if os.path.isdir(directory) else []
    for step in steps:
      path = os.path.join(directory, str(step), 'meta', 'metadata')
      if os.path.exists(path):
        with open(path) as f:
          return json.load(f), os.path.join(directory, str(step))
  raise CheckpointError(f'{workdir}: no checkpoint found (looked in '
                        f'{", ".join(order)}); train a model there first')


def abstract_with_shardings(abstract_state, sharding):
  """ShapeDtypeStructs carrying the target sharding, for sharded restore."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      abstract_state)


def _get(config_dict: dict, dotted: str):
  node = config_dict
  for part in dotted.split('.'):
    if not isinstance(node, dict) or part not in node:
      return None
    node = node[part]
  return node


def check_compatible(saved_config: dict, config_dict: dict, workdir: str):
  """Refuse to resume a checkpoint that another architecture wrote."""
  diffs = []
  for key in ARCHITECTURE_KEYS:
    old, new = _get(saved_config, key), _get(config_dict, key)
    if json.dumps(old, sort_keys=True, default=list) != json.dumps(
        new, sort_keys=True, default=list):
      diffs.append(f'{key}: checkpoint has {old}, config has {new}')
  if diffs:
    raise CheckpointError(
        f'{workdir} holds a checkpoint of an incompatible config ('
        + '; '.join(diffs) + '); use a new --workdir or the same config')
