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
import logging
import math
import os
import shutil
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from mtl_jax import dotted_paths, exported
from mtl_jax.errors import CheckpointError, ConfigError

LATEST_DIR = 'checkpoints'
BEST_DIR = 'best'
# Config sections that change the parameter tree or what the model means.
# (The HU window is a property of the built data, checked against it at
# start: `pipeline.check_built`.)
ARCHITECTURE_KEYS = ('model', 'loss.weights', 'loss.uncertainty_weighting',
                     'data.image_size')


def selection_value(results: dict, best_metric: str) -> float | None:
  """The figure that ranks checkpoints for `best`: one validation metric, or
  the mean of several joined by '+' (a multi-task model is chosen on all its
  tasks, e.g. 'dice+auc_covid'). A name may reach into per-source results:
  'by_source/covid_ct/auc_covid'. Higher is better; a leading '-' ranks a
  lower-is-better metric ('-recon_mse'). None when a value is undefined (nan).
  """
  values = []
  for name in best_metric.split('+'):
    name, sign = name.strip(), 1.0
    if name.startswith('-'):
      name, sign = name[1:].strip(), -1.0
    value = results
    for key in name.split('/'):
      if not isinstance(value, dict) or key not in value:
        raise ConfigError(f'train.best_metric={best_metric!r}: the validation results have '
                          f'no {name!r}')
      value = value[key]
    if value is None or not math.isfinite(float(value)):
      return None
    values.append(sign * float(value))
  return sum(values) / len(values)


def _manager(directory, options):
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


# A finished checkpoint step folder holds all of these; orbax writes a step in
# `N.orbax-checkpoint-tmp` and renames it into place only when it is complete.
COMPLETE_MARKERS = ('state/_METADATA', 'meta/metadata')
# A checkpoint being removed is first renamed to this prefix + step (atomic),
# then deleted: a kill mid-removal leaves a folder orbax never lists.
DISCARD_PREFIX = '.discard-'


def is_complete(step_dir: str) -> bool:
  """Whether a step folder was finished: a kill mid-save leaves it without them."""
  return all(os.path.exists(os.path.join(step_dir, m)) for m in COMPLETE_MARKERS)


def sweep(directory: str) -> list[str]:
  """Remove what a killed run left in a checkpoint folder; return one log line each.

  Unfinished saves (`N.orbax-checkpoint-tmp*`) and half-removed checkpoints
  (`.discard-N`) are deleted. A step folder missing a file that finished
  checkpoints have (a removal killed midway before the rename above existed,
  or a checkpoint of an orbax that writes other files) is only moved aside
  to `.incomplete-N`, never deleted, so that a replay can save step N again.
  """
  if not os.path.isdir(directory):
    return []
  lines = []
  for name in sorted(os.listdir(directory)):
    path = os.path.join(directory, name)
    if not os.path.isdir(path):
      continue
    if '.orbax-checkpoint-tmp' in name:
      why = 'an unfinished save (the run was stopped while saving)'
    elif name.startswith(DISCARD_PREFIX):
      why = 'a checkpoint that was being removed'
    elif name.isdigit() and not is_complete(path):
      aside = os.path.join(directory, f'.incomplete-{name}-{time.time_ns()}')
      os.rename(path, aside)
      lines.append(f'{directory}: moved {name} aside to {os.path.basename(aside)}: '
                   'files missing (not a finished checkpoint); delete it if not needed')
      continue
    else:
      continue
    shutil.rmtree(path, ignore_errors=True)
    lines.append(f'{directory}: removed {name}, {why}')
  return lines


def _sync(name: str):
  """Every process waits here until process 0 has changed the folders."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f'mtl_jax_checkpointing_{name}')


def _agreed(value: float | None) -> float | None:
  """Process 0's selection value, on every process.

  Every process computes the same metrics from the same gathered
  predictions, but should one float ever differ, processes that disagree on
  whether to save `best` would wait for ever on each other's collective save
  (and on the reference statistics `make_meta` gathers). The float64 travels
  as int32 bits, so that it arrives exact with jax's 64-bit mode off.
  """
  if jax.process_count() == 1:
    return value
  bits = np.array([math.nan if value is None else value], np.float64).view(np.int32)
  bits = np.asarray(multihost_utils.broadcast_one_to_all(bits), np.int32)
  agreed = float(bits.view(np.float64)[0])
  return None if math.isnan(agreed) else agreed


class Checkpointer:
  """The latest `keep` checkpoints (resume) and the best one (`best_metric`).

  Crash safety, so that a run killed at any instant resumes: orbax writes
  each step into a temporary folder and renames it into place; removals
  rename first and delete after (`DISCARD_PREFIX`); opening a workdir for
  training sweeps away what a kill left half-done (`sweep`). A best
  checkpoint newer than the resume point is kept: the deterministic replay
  re-evaluates that step and either re-validates it (same value: kept as
  is) or replaces it (`update_best`).
  """

  def __init__(self, workdir: str, keep: int = 3, best_metric: str = 'dice',
               read_only: bool = False, best_hooks=()):
    """`best_hooks`: functions (state, held_out) -> dict of more record
    fields, called only when a best checkpoint is written: what a kept model
    carries for prediction (the out-of-distribution reference,
    `evaluation.ood_reference_hook`), built from the validation predictions
    just made (`held_out`)."""
    self.best_hooks = tuple(best_hooks)
    if int(keep) < 1:
      raise ConfigError(f'train.keep_checkpoints={keep}: keep at least 1')
    self.best_metric, self.keep, self.read_only = best_metric, int(keep), read_only
    self.dirs = {which: os.path.abspath(os.path.join(workdir, sub))
                 for which, sub in (('latest', LATEST_DIR), ('best', BEST_DIR))}
    if not read_only:
      if jax.process_index() == 0:
        for directory in self.dirs.values():
          for line in sweep(directory):
            logging.warning('%s', line)
      _sync('sweep')
    common = dict(create=not read_only, read_only=read_only,
                  enable_async_checkpointing=False)
    self.latest = _manager(self.dirs['latest'], ocp.CheckpointManagerOptions(**common))
    self.best = _manager(self.dirs['best'], ocp.CheckpointManagerOptions(**common))
    if not read_only:  # a kill between a save and the removal it implies
      self._discard('latest', self._steps('latest')[:-self.keep])
      self._discard('best', [s for s in self._steps('best') if s != self.best_step()])

  def _manager(self, which):
    return self.latest if which == 'latest' else self.best

  def _steps(self, which) -> list[int]:
    return finished_steps(self.dirs[which])

  def _discard(self, which: str, steps):
    """Remove checkpoints atomically (rename, then delete; see `sweep`)."""
    steps = list(steps)
    if not steps:
      return
    if jax.process_index() == 0:
      for step in steps:
        src = os.path.join(self.dirs[which], str(step))
        dst = os.path.join(self.dirs[which], f'{DISCARD_PREFIX}{step}')
        os.rename(src, dst)
        shutil.rmtree(dst)
    _sync(f'discard_{which}')
    self._manager(which).reload()

  def save_latest(self, step: int, state, meta: dict):
    """Save `state` as the latest step (waits for the write), keep the last `keep`."""
    self.latest.save(step, args=_save_args(state, meta), force=True)
    self.latest.wait_until_finished()
    self._discard('latest', self._steps('latest')[:-self.keep])

  def best_value(self, step: int | None = None) -> float | None:
    """The recorded selection value of best checkpoint `step` (default: the kept one)."""
    step = self.best_step() if step is None else step
    return None if step is None else recorded_value(
        os.path.join(self.dirs['best'], str(step)), self.best_metric)

  def best_step(self) -> int | None:
    return select_step(os.path.dirname(self.dirs['best']), 'best')

  def _is_better(self, value: float | None) -> bool:
    """Whether this selection value would replace the kept best checkpoint."""
    kept = self.best_value()
    return value is not None and (kept is None or value > kept)

  def update_best(self, step: int, state, meta: dict, metrics: dict,
                  held_out: dict | None = None) -> str:
    """Keep this step as `best` if its `best_metric` beats the kept one.

    The record is `meta` and what the `best_hooks` add. Returns what
    happened: 'saved', 'not better', 'undefined' (the value is nan), or
    'revalidated' (a resumed run re-reached a best step saved before the
    kill, with the same value: it is kept as it is).
    """
    value = _agreed(selection_value(metrics, self.best_metric))
    if value is None:
      return 'undefined'
    if step in self._steps('best'):
      if self.best_value(step) == value:
        return 'revalidated'
      logging.warning('best/%d: the replay gave %s=%r, the checkpoint has %r; replacing it',
                      step, self.best_metric, value, self.best_value(step))
      self._discard('best', [step])
    if not self._is_better(value):
      return 'not better'
    meta = dict(meta)
    for hook in self.best_hooks:
      meta.update(hook(state, held_out or {}))
    meta['selection'] = {'best_metric': self.best_metric, 'value': value}
    # The figures it was chosen on, for the model card (model_card.card).
    meta['validation'] = {'split': metrics.get('split', 'validation'),
                          'metrics': {k: float(v) for k, v in sorted(metrics.items())
                                      if isinstance(v, (int, float))
                                      and not isinstance(v, bool)}}
    self.best.save(step, args=_save_args(state, meta), force=True)
    self.best.wait_until_finished()
    self._discard('best', [s for s in self._steps('best') if s != step])
    return 'saved'

  def latest_step(self):
    return select_step(os.path.dirname(self.dirs['latest']), 'latest')

  def kept_steps(self) -> list[int]:
    """Steps of the kept latest checkpoints, oldest first."""
    return self._steps('latest')

  def restore(self, abstract_state, which: str = 'latest', step: int | None = None):
    """(state, meta) from the latest checkpoint, the best one, or a given
    `step` among the kept latest ones (see `kept_steps`)."""
    return self._restore(which, step, ocp.args.StandardRestore(abstract_state))

  def restore_variables(self, abstract_variables, which: str = 'best',
                        step: int | None = None):
    """(variables, meta): only the parts of the state named in
    `abstract_variables` (params and batch_stats for inference), never the
    optimizer state."""
    return self._restore(which, step, ocp.args.PyTreeRestore(
        item=abstract_variables, partial_restore=True,
        restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_variables)))

  def _restore(self, which, step, state_args):
    manager = self._manager(which)
    if step is None:
      step = select_step(os.path.dirname(self.dirs[which]), which)
    if step is None:
      raise CheckpointError(f'no {which} checkpoint in {manager.directory}')
    restored = manager.restore(step, args=ocp.args.Composite(
        state=state_args, meta=ocp.args.JsonRestore()))
    return restored['state'], restored['meta']

  def close(self):
    self.latest.close()
    self.best.close()


def _save_args(state, meta):
  return ocp.args.Composite(state=ocp.args.StandardSave(state),
                            meta=ocp.args.JsonSave(meta))


def finished_steps(directory: str) -> list[int]:
  """Steps of the finished checkpoints in a folder, oldest first."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(d) for d in os.listdir(directory)
                if d.isdigit() and is_complete(os.path.join(directory, d)))


def recorded_value(step_dir: str, best_metric: str | None = None) -> float | None:
  """The selection value a best checkpoint was saved with (`meta['selection']`;
  checkpoints written before it existed keep it in orbax's `metrics` item).

  With `best_metric`, a value recorded for another metric is unknown (None):
  a run resumed with another `train.best_metric` never compares the two.
  """
  try:
    selection = read_json(os.path.join(step_dir, 'meta', 'metadata')).get('selection', {})
    recorded = {selection.get('best_metric'): selection.get('value')} if selection else {}
    if not recorded and os.path.exists(os.path.join(step_dir, 'metrics', 'metrics')):
      recorded = read_json(os.path.join(step_dir, 'metrics', 'metrics'))
  except (OSError, ValueError):
    return None
  if best_metric is not None:
    value = recorded.get(best_metric)
  else:
    value = next(iter(recorded.values())) if len(recorded) == 1 else None
  return None if value is None else float(value)


def select_step(workdir: str, which: str) -> int | None:
  """The step `which` names: the newest finished latest checkpoint, or the
  best checkpoint with the highest recorded value (the newest on a tie).

  One rule for training, evaluation and prediction: after a kill between a
  save and the removal of the one it replaces, two may exist for a moment.
  """
  directory = os.path.join(workdir, LATEST_DIR if which == 'latest' else BEST_DIR)
  steps = finished_steps(directory)
  if not steps:
    return None
  if which == 'latest':
    return steps[-1]
  value = lambda s: recorded_value(os.path.join(directory, str(s)))
  return max(steps, key=lambda s: (-math.inf if value(s) is None else value(s), s))


def read_json(path: str) -> dict:
  """A JSON file's contents (an unreadable file raises: callers say which)."""
  with open(path) as f:
    return json.load(f)


def read_meta(workdir: str, which: str = 'best') -> tuple[dict, str]:
  """The meta JSON of a workdir's best (else latest) checkpoint, and its path.

  Reads the JSON file directly, so callers learn the config before building
  a model. Raises CheckpointError with one line when there is none. An
  exported model folder (`mtl_jax/exported.py`) is read as its one checkpoint.
  """
  if exported.is_exported(workdir):
    return exported.read_meta(workdir), os.path.abspath(workdir)
  order = ('best', 'latest') if which == 'best' else ('latest',)
  for kind in order:
    step = select_step(workdir, kind)
    if step is not None:
      path = os.path.join(workdir, LATEST_DIR if kind == 'latest' else BEST_DIR, str(step))
      return read_json(os.path.join(path, 'meta', 'metadata')), path
  raise CheckpointError(f'{workdir}: no checkpoint found (looked in '
                        f'{", ".join(BEST_DIR if k == "best" else LATEST_DIR for k in order)}'
                        '); train a model there first')


def kind_of(step_dir: str) -> str:
  """'best' or 'latest': which folder a checkpoint step folder is in."""
  return 'best' if os.path.basename(os.path.dirname(step_dir)) == BEST_DIR else 'latest'


def step_of(step_dir: str) -> int:
  return int(os.path.basename(step_dir))


def abstract_with_shardings(abstract_state, sharding):
  """ShapeDtypeStructs carrying the target sharding, for sharded restore."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      abstract_state)


def check_compatible(saved_config: dict, config_dict: dict, workdir: str):
  """Refuse to resume a checkpoint that another architecture wrote."""
  diffs = []
  for key in ARCHITECTURE_KEYS:
    old, new = dotted_paths.get(saved_config, key), dotted_paths.get(config_dict, key)
    if json.dumps(old, sort_keys=True, default=list) != json.dumps(
        new, sort_keys=True, default=list):
      diffs.append(f'{key}: checkpoint has {old}, config has {new}')
  if diffs:
    raise CheckpointError(
        f'{workdir} holds a checkpoint of an incompatible config ('
        + '; '.join(diffs) + '); use a new --workdir or the same config')


def check_same_data(saved_meta: dict, built: dict, workdir: str):
  """Refuse to resume on training data other than the run started on.

  `built` is {source: the builders' record (+ its pseudo-label set's record:
  teacher, step, counts)} now; the checkpoint kept the same when it was
  written. Rebuilt sources, or a label set remade under the same name, would
  change a resumed run's targets silently from its resume step on.
  Checkpoints written before records were kept are not checked.
  """
  saved = (saved_meta.get('preprocessing') or {}).get('built')
  if not saved:
    return
  diffs = []
  for source in sorted(set(saved) & set(built)):
    old, new = saved[source] or {}, built[source] or {}
    keys = [k for k in sorted(set(old) | set(new))
            if json.dumps(old.get(k), sort_keys=True, default=list)
            != json.dumps(new.get(k), sort_keys=True, default=list)]
    if keys:
      diffs.append(f'{source}: {", ".join(keys)}')
  if diffs:
    raise CheckpointError(
        f'{workdir} was trained on other data than is built now ('
        + '; '.join(diffs) + '): resuming would change its targets mid-run; restore '
        'that data (or label set) or start a new --workdir')
