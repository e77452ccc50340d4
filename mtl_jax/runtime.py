"""What training, evaluation and prediction share: model, apply, checkpoint record, restore.

A `Runtime` is built from a config alone: the enabled tasks, the model with
their heads, the device mesh, and the abstract model variables (params and
BatchNorm statistics). It owns the one jitted inference apply
(`predict_fn`), with optional left-right flip TTA and the extra outputs
`predict` reports, and the one restore sequence (`load` for inference,
`Runtime.restore` for training). The trainer adds an optimizer and a loop on
top; evaluation and prediction never import it (big_vision's predict_fns,
nnU-Net's predictor that builds only the network).
"""

from __future__ import annotations

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtl_jax import checkpointing, exported, models, parallel
from mtl_jax.config import loader
from mtl_jax import tasks as tasks_lib
from mtl_jax.data import preprocess
from mtl_jax.errors import CheckpointError, ConfigError


class Runtime:
  """Model, tasks and mesh of a config, its jitted inference, its restore."""

  def __init__(self, config, devices=None):
    self.config = config
    self.mesh = parallel.create_mesh(devices)
    self.tasks = tasks_lib.make_tasks(config)
    if not self.tasks:
      raise ConfigError('every loss weight is 0: enable at least one task in '
                        'config.loss.weights')
    self.model = models.build_model(config, self.tasks)
    self.replicated = parallel.replicated(self.mesh)
    self.batch_sharded = parallel.batch_sharded(self.mesh)
    key = jax.random.key(0)
    self.abstract_variables = jax.eval_shape(self.init_variables, key, key)
    self._predict_fns = {}

  @property
  def image_size(self) -> int:
    return int(self.config.data.image_size)

  def init_variables(self, params_rng, dropout_rng) -> dict:
    """Fresh {'params', 'batch_stats'} (pure: jit or eval_shape it)."""
    size = self.image_size
    variables = self.model.init({'params': params_rng, 'dropout': dropout_rng},
                                jnp.zeros((1, size, size, 1), jnp.float32), train=False)
    return {'params': variables['params'],
            'batch_stats': variables.get('batch_stats', {})}

  def apply_fn(self, tta: bool = False, extras: bool = False):
    """(variables, images (B, S, S)) -> every task's predictions, unjitted.

    `extras` adds what `predict` reports: each task's `extras` (per-class
    segmentation probabilities, each slice's reconstruction error) and the
    encoder feature statistics (`features`, for the out-of-distribution
    score). `tta` averages every task's `averaged` outputs with those of the
    left-right flipped slice (`tasks.average`), which also derives the label
    maps from the averaged probabilities.
    """
    model, tasks = self.model, self.tasks

    def once(variables, images, with_extras):
      outputs = model.apply(variables, images[..., None], train=False)
      predictions, extra_keys = {}, set()
      for task in tasks.values():
        predictions.update(task.predict(outputs))
        if with_extras:
          more = task.extras(outputs, images)
          predictions.update(more)
          extra_keys.update(more)
      if extras:
        predictions['features'] = outputs['features']
      return predictions, extra_keys

    def apply(variables, images):
      # TTA averages the extras too (per-class maps make the label map).
      predictions, extra_keys = once(variables, images, extras or tta)
      if tta:
        flipped, _ = once(variables, images[:, :, ::-1], True)
        predictions = tasks_lib.average(tasks, [predictions,
                                                tasks_lib.flip_back(tasks, flipped)])
        if not extras:
          predictions = {k: v for k, v in predictions.items() if k not in extra_keys}
      return predictions
    return apply

  def predict_fn(self, tta: bool = False, extras: bool = False):
    """`apply_fn` jitted over the mesh: variables replicated, batch sharded
    (one per setting, so repeated calls reuse its compilation)."""
    if (tta, extras) not in self._predict_fns:
      self._predict_fns[tta, extras] = jax.jit(
          self.apply_fn(tta, extras), in_shardings=(self.replicated, self.batch_sharded),
          out_shardings=self.batch_sharded)
    return self._predict_fns[tta, extras]

  def summary(self) -> str:
    size = self.image_size
    return nn.tabulate(self.model, {'params': jax.random.key(0),
                                    'dropout': jax.random.key(1)},
                       depth=1, console_kwargs={'width': 120})(
                           jnp.zeros((1, size, size, 1)), train=False)

  def restore(self, workdir: str, which: str = 'best', step: int | None = None,
              abstract_state: dict | None = None):
    """(state or variables, meta) from a workdir's checkpoint.

    For training pass the abstract train state (`abstract_state`): all of it
    is restored, optimizer included. Otherwise only {'params',
    'batch_stats'} are read, replicated over the mesh.
    """
    ckpt = checkpointing.Checkpointer(workdir, read_only=True)
    try:
      if abstract_state is not None:
        return ckpt.restore(checkpointing.abstract_with_shardings(
            abstract_state, self.replicated), which, step)
      return ckpt.restore_variables(checkpointing.abstract_with_shardings(
          self.abstract_variables, self.replicated), which, step)
    finally:
      ckpt.close()


def checkpoint_meta(config, step: int, source_stats: dict, built: dict | None = None) -> dict:
  """What evaluation and prediction need to rebuild and replay the model:
  the config, and the preprocessing (the builders' records in `built`, and
  training's own choices)."""
  return {'config': json.loads(loader.to_json(config)),
          'preprocessing': preprocess.settings_from_config(config, source_stats, built),
          'tasks': list(tasks_lib.enabled_tasks(config)),
          'data_iterator': {'step': int(step), 'sources': dict(config.data.sources)}}


def transfer(target: dict, source: dict, where: str) -> tuple[dict, list, list]:
  """(target with every parameter the source also has copied in, loaded
  paths, paths left as initialised).

  For fine-tuning from another run (`config.init_from`): a pre-trained
  encoder and reconstruction decoder into a three-task model, say. Shapes
  must agree wherever both have a parameter, and something must match:
  another architecture is a one-line CheckpointError naming what differs,
  never a silent partial load.
  """
  flat_source = dict(jax.tree_util.tree_flatten_with_path(source)[0])
  loaded, fresh, mismatched = [], [], []

  def pick(path, leaf):
    name = jax.tree_util.keystr(path, simple=True, separator='/')
    if path not in flat_source:
      fresh.append(name)
      return leaf
    if flat_source[path].shape != leaf.shape:
      mismatched.append(f'{name} {tuple(flat_source[path].shape)} vs {tuple(leaf.shape)}')
      return leaf
    loaded.append(name)
    return jnp.asarray(flat_source[path], leaf.dtype)

  merged = jax.tree_util.tree_map_with_path(pick, target)
  if mismatched:
    raise CheckpointError(f'{where}: another architecture ({len(mismatched)} parameters '
                          f'differ in shape, e.g. {"; ".join(mismatched[:3])})')
  if not loaded:
    raise CheckpointError(f'{where}: no parameter matches this model')
  return merged, loaded, fresh


@dataclasses.dataclass
class Loaded:
  """A restored model, ready for inference."""
  runtime: Runtime
  variables: dict
  meta: dict
  path: str  # the checkpoint's step folder
  which: str  # 'best' or 'latest'
  step: int


def load(workdir: str, which: str = 'best', overrides=(), devices=None) -> Loaded:
  """The one restore sequence for inference: read the checkpoint's record,
  rebuild its config and model, restore parameters and batch statistics.

  `which='best'` falls back to the latest checkpoint when no best exists.
  `overrides` (--config.KEY=VALUE) may change evaluation settings, never the
  architecture (`checkpointing.check_compatible`).
  """
  meta, path = checkpointing.read_meta(workdir, which)
  config = loader.from_dict(meta['config'])
  loader.apply_overrides(config, list(overrides))
  checkpointing.check_compatible(meta['config'],
                                 json.loads(loader.to_json(config)), workdir)
  if exported.is_exported(path):  # parameters and batch statistics only, stored smaller
    runtime = Runtime(config, devices)
    variables = jax.device_put(exported.read_variables(path, runtime.abstract_variables),
                               runtime.replicated)
    return Loaded(runtime, variables, meta, path, 'exported', int(meta['export']['step']))
  found = checkpointing.kind_of(path)
  runtime = Runtime(config, devices)
  variables, meta = runtime.restore(workdir, found, step=checkpointing.step_of(path))
  return Loaded(runtime, variables, meta, path, found, checkpointing.step_of(path))
