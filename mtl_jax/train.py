"""Training: `train_and_evaluate(config, workdir)`, and `train_in_stages` for a
run with a pre-training stage.

One jitted step, data-parallel over a `data` mesh axis: parameters
replicated, the batch sharded, the state donated. The train state is a plain
dict (step, params, batch_stats, opt_state, rng). Metrics of every step stay
on the device until the next log step, then are fetched together, so the
loop never waits on the host, yet a NaN is still reported with its exact step.
"""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtl_jax import checkpointing, errors, evaluation, history, jsonio, parallel
from mtl_jax import runtime as runtime_lib
from mtl_jax import tasks as tasks_lib
from mtl_jax import writers, xla_cpu
from mtl_jax.config import loader, stages
from mtl_jax.data import pipeline


def make_optimizer(config):
  """AdamW with linear warm-up, cosine decay and global-norm clipping."""
  o = config.optim
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=o.learning_rate,
      warmup_steps=min(o.warmup_steps, config.train.num_train_steps),
      decay_steps=max(config.train.num_train_steps, o.warmup_steps + 1),
      end_value=o.learning_rate * o.end_learning_rate_factor)
  # No weight decay on biases, norm scales and task log-variances.
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  tx = optax.chain(optax.clip_by_global_norm(o.grad_clip_norm),
                   optax.adamw(schedule, weight_decay=o.weight_decay,
                               mask=decay_mask))
  return tx, schedule


def init_state(runtime, tx, rng):
  """The initial train state as a plain dict."""
  params_rng, dropout_rng, rng = jax.random.split(rng, 3)
  variables = runtime.init_variables(params_rng, dropout_rng)
  return {'step': jnp.zeros((), jnp.int32), 'params': variables['params'],
          'batch_stats': variables['batch_stats'],
          'opt_state': tx.init(variables['params']), 'rng': rng}


def make_train_step(model, tasks, tx, schedule, config):
  def train_step(state, batch):
    rng = jax.random.fold_in(state['rng'], state['step'])
    inputs = batch['image']
    for i, task in enumerate(tasks.values()):
      inputs = task.train_inputs(inputs, jax.random.fold_in(rng, i + 1))

    def loss_fn(params):
      outputs, new_vars = model.apply(
          {'params': params, 'batch_stats': state['batch_stats']},
          inputs[..., None], train=True, mutable=['batch_stats'],
          rngs={'dropout': rng})
      total, terms = tasks_lib.total_loss(tasks, outputs, batch, config)
      return total, (terms, new_vars.get('batch_stats', {}))

    grads, (terms, batch_stats) = jax.grad(loss_fn, has_aux=True)(state['params'])
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    terms.update(grad_norm=optax.tree.norm(grads),
                 param_norm=optax.tree.norm(params),
                 learning_rate=schedule(state['step']))
    new_state = dict(state, step=state['step'] + 1, params=params,
                     batch_stats=batch_stats, opt_state=opt_state)
    return new_state, terms
  return train_step


def variables_of(state) -> dict:
  """The part of a train state that inference uses."""
  return {'params': state['params'], 'batch_stats': state['batch_stats']}


class Trainer:
  """A runtime (model, tasks, mesh, inference apply) plus optimizer and train step."""

  def __init__(self, config, devices=None):
    self.runtime = runtime_lib.Runtime(config, devices)
    self.config, self.mesh, self.tasks = config, self.runtime.mesh, self.runtime.tasks
    parallel.check_batch_size(config.train.global_batch_size,
                              num_devices=self.mesh.size)
    self.tx, self.schedule = make_optimizer(config)
    repl = self.runtime.replicated
    init_fn = functools.partial(init_state, self.runtime, self.tx)
    self.abstract_state = jax.eval_shape(init_fn, jax.random.key(0))
    self.init = jax.jit(init_fn, out_shardings=repl)
    self.train_step = jax.jit(
        make_train_step(self.runtime.model, self.tasks, self.tx, self.schedule, config),
        in_shardings=(repl, self.runtime.batch_sharded),
        out_shardings=(repl, repl), donate_argnums=(0,),
        # On the CPU: Eigen convolutions, whose weight gradients are ~2x
        # faster than YNNPACK's (mtl_jax/xla_cpu.py; bench/RESULTS.md).
        compiler_options=xla_cpu.train_compiler_options())
    # With extras (encoder features, per-slice reconstruction error): a
    # validation pass then also yields what the best checkpoint's
    # out-of-distribution reference needs (evaluation.evaluate's held_out).
    self.predict = self.runtime.predict_fn(extras=True)

  def restore_target(self):
    return checkpointing.abstract_with_shardings(self.abstract_state,
                                                 self.runtime.replicated)

  def evaluate(self, state, split: str, max_examples: int | None = None,
               held_out: dict | None = None):
    return evaluation.evaluate(self.runtime, self.predict, variables_of(state), split,
                               max_examples, held_out)


def count_params(params) -> int:
  """The number of scalars in a parameter tree."""
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))


def _lock_workdir(workdir: str):
  """An exclusive lock on WORKDIR/.lock for this process's lifetime: a second
  `train` on a running workdir would sweep away its checkpoints in progress."""
  handle = open(os.path.join(workdir, '.lock'), 'w')  # pylint: disable=consider-using-with
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    handle.close()
    raise errors.UserError(f'{workdir} is in use by another mtl-jax train (its .lock is '
                           'held); wait for it or choose another --workdir') from None
  return handle


def _init_from(state, workdir: str, trainer):
  """A fresh state whose parameters and BatchNorm statistics come from
  another run's checkpoint wherever that run has them (`runtime.transfer`);
  the optimizer starts afresh. Logs what was loaded and what was not."""
  source = runtime_lib.load(workdir, 'best')
  variables = {'params': state['params'], 'batch_stats': state['batch_stats']}
  merged, loaded, fresh = runtime_lib.transfer(variables, source.variables,
                                               f'init_from={workdir}')
  logging.info('init_from %s (%s, step %d): loaded %d parameters (%s); initialised %d '
               '(%s)', workdir, source.which, source.step, len(loaded),
               _modules(loaded), len(fresh), _modules(fresh) or 'none')
  merged = jax.device_put(merged, trainer.runtime.replicated)
  return dict(state, params=merged['params'], batch_stats=merged['batch_stats'])


def _modules(paths) -> str:
  """'encoder, recon_decoder' for parameter paths like 'params/encoder/...'."""
  return ', '.join(sorted({p.split('/')[1] for p in paths if '/' in p}))


def _flush_metrics(pending, writer, timing):
  """Fetch pending step metrics, fail on NaN, write their means."""
  if not pending:
    return {}
  steps, values = zip(*pending)
  values = jax.device_get(values)
  for step, terms in zip(steps, values):
    bad = [k for k, v in terms.items() if not np.all(np.isfinite(v))]
    if bad:
      raise errors.TrainingDivergedError(
          f'non-finite {", ".join(sorted(bad))} at step {step}; '
          'lower optim.learning_rate or check the input data')
  means = {f'train/{k}': float(np.mean([v[k] for v in values])) for k in values[0]}
  means.update(timing)
  writer.write_scalars(steps[-1], means)
  pending.clear()
  return means


def train_and_evaluate(config, workdir: str, interrupt_at_step: int | None = None,
                       init_from: str | None = None):
  """Train, evaluate periodically, checkpoint; resume if `workdir` has a run.

  `interrupt_at_step` stops abruptly (no final save) after that step; tests
  use it to stand in for a killed process. `init_from` (default:
  `config.init_from`) is the run a fresh start takes its weights from; the
  staged runner (`train_in_stages`) passes its own pre-training stage.
  """
  trainer = Trainer(config)
  built = pipeline.check_built(config)  # a mistake leaves no workdir behind
  os.makedirs(workdir, exist_ok=True)
  lead = jax.process_index() == 0
  lock = _lock_workdir(workdir) if lead else None
  try:
    return _run(config, workdir, trainer, built, interrupt_at_step,
                config.init_from if init_from is None else init_from)
  finally:
    if lock is not None:
      lock.close()


def train_in_stages(config, workdir: str, interrupt_at_step: int | None = None):
  """`train_and_evaluate`, after the pre-training stage if the config has one
  (`train.pretrain_steps > 0`; the stage's config: `stages.pretrain_config`).

  The stage trains in WORKDIR/pretrain and resumes on its own; a finished
  stage is not trained again. `interrupt_at_step` applies to the three-task
  stage (tests).
  """
  init_from = config.init_from
  steps = config.train.pretrain_steps
  if steps < 0:
    raise errors.ConfigError(f'train.pretrain_steps={steps}: give 0 (no pre-training '
                             'stage) or a number of steps')
  if steps:
    if init_from:
      raise errors.ConfigError(
          f'init_from={init_from} and train.pretrain_steps={steps} both give the run its '
          'starting weights; set train.pretrain_steps=0 to start from init_from')
    init_from = os.path.join(workdir, stages.PRETRAIN_DIR)
    done = checkpointing.select_step(init_from, 'latest')
    if done is not None and done >= steps:
      _check_same_stage(config, init_from)
      logging.info('pre-training stage finished in %s (step %d): not trained again',
                   init_from, done)
    else:
      logging.info('pre-training stage (%d steps) in %s, then the three tasks', steps,
                   init_from)
      train_and_evaluate(stages.pretrain_config(config), init_from)
  return train_and_evaluate(config, workdir, interrupt_at_step, init_from=init_from)


def _check_same_stage(config, stage_dir: str):
  """A finished stage is reused only if this config derives the same one: a
  run restarted with other settings must not fine-tune from a stale stage."""
  path = os.path.join(stage_dir, 'config.json')
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise errors.CheckpointError(f'{path}: the finished pre-training stage has no '
                                 f'readable config ({e}); use a new --workdir') from None
  expected = json.loads(loader.to_json(stages.pretrain_config(config)))
  differ = loader.differences(saved, expected, ignored=('preset',))
  if differ:
    raise errors.CheckpointError(
        f'{stage_dir} holds a pre-training stage of other settings ({", ".join(differ)}); '
        'use a new --workdir, or the settings it was trained with')


def _run(config, workdir, trainer, built, interrupt_at_step, init_from):
  """The body of `train_and_evaluate`, once the workdir is locked."""
  lead = jax.process_index() == 0
  parallel.log_topology()
  config_dict = json.loads(loader.to_json(config))
  for which in ('latest', 'best'):  # a best one without a latest one must fit too
    if checkpointing.select_step(workdir, which) is not None:
      saved, _ = checkpointing.read_meta(workdir, which)
      checkpointing.check_compatible(saved['config'], config_dict, workdir)
      checkpointing.check_same_data(saved, built, workdir)
  ckpt = checkpointing.Checkpointer(
      workdir, config.train.keep_checkpoints, config.train.best_metric,
      best_hooks=(evaluation.ood_reference_hook(trainer.runtime, trainer.predict,
                                                variables_of),
                  evaluation.confidence_hook(trainer.runtime)))
  try:
    if ckpt.latest_step() is not None:
      state, _ = ckpt.restore(trainer.restore_target())
      logging.info('resumed from step %d in %s', int(state['step']), workdir)
      best = ckpt.best_step()
      if best is not None and best > int(state['step']):
        logging.info('best/%d is newer than the resume point: kept, and re-validated '
                     'when the replay reaches step %d', best, best)
    else:
      state = trainer.init(jax.random.key(config.seed))
      if init_from:
        state = _init_from(state, init_from, trainer)
      if lead:
        print(trainer.runtime.summary())
  except BaseException:
    ckpt.close()
    raise
  start = int(state['step'])
  num_params = count_params(state['params'])
  logging.info('model: %s parameters, tasks %s', f'{num_params:,}', tuple(trainer.tasks))
  writer = writers.create_writer(os.path.join(workdir, 'tensorboard'),
                                 just_logging=not lead)
  if lead:
    jsonio.write_json(os.path.join(workdir, 'config.json'), config_dict, sort_keys=True)
    writer.write_hparams({'num_params': num_params, 'preset': config.preset})

  try:
    stats = pipeline.source_stats(config)
    meta_at = lambda step: runtime_lib.checkpoint_meta(config, step, stats, built)
    shard = pipeline.ProcessShard(jax.process_index(), jax.process_count())
    batches = pipeline.iterate(pipeline.train_dataset(config, shard, stats), start, config)
    total = config.train.num_train_steps
    report = writers.periodic_actions.ReportProgress(num_train_steps=total,
                                                     writer=writer)
    progress = _progress_bar(config, start, total) if lead else None
    pending, results = [], {}
    wait_time, t_log, steps_since = 0.0, time.time(), 0
    for step in range(start + 1, total + 1):
      t0 = time.time()
      local = next(batches)
      wait_time += time.time() - t0
      state, terms = trainer.train_step(state, parallel.global_batch(local, trainer.mesh))
      pending.append((step, terms))
      steps_since += 1
      report(step)
      last = step == total
      if step % config.train.log_every_steps == 0 or last or step == interrupt_at_step:
        jax.block_until_ready(terms)  # time finished steps, not dispatched ones
        elapsed = time.time() - t_log
        _flush_metrics(pending, writer, {
            'steps_per_sec': steps_since / elapsed,
            'slices_per_sec': steps_since * config.train.global_batch_size / elapsed,
            # Host time blocked on the input pipeline: an upper bound on the
            # device's idle time, since dispatched steps may still be running.
            'data_wait_fraction': wait_time / elapsed})
        if progress is not None:  # after the fetch, so the bar shows finished steps
          progress.update(steps_since)
        wait_time, t_log, steps_since = 0.0, time.time(), 0
      t_pause = time.time()  # evaluation and saving do not count as step time
      if step % config.train.eval_every_steps == 0 or last:
        _flush_metrics(pending, writer, {})
        held_out = {}
        results = trainer.evaluate(state, 'validation', config.eval.max_examples, held_out)
        scalars = evaluation.scalars(results, 'validation')
        writer.write_scalars(step, scalars)
        if lead:
          history.append(workdir, step, scalars)
        outcome = ckpt.update_best(step, state, meta_at(step), results, held_out)
        if outcome == 'revalidated':
          logging.info('best/%d re-validated by the replay: kept', step)
        elif outcome == 'undefined':
          logging.warning('step %d: train.best_metric=%s is undefined (nan) on validation; '
                          'no best checkpoint is kept for it', step, config.train.best_metric)
      if step % config.train.checkpoint_every_steps == 0 or last:
        _flush_metrics(pending, writer, {})
        ckpt.save_latest(step, state, meta_at(step))
      t_log += time.time() - t_pause
      if step == interrupt_at_step:
        break
    if progress is not None:
      progress.close()
  finally:  # also on a NaN or Ctrl-C: flush events, release files
    writer.close()
    ckpt.close()
  if lead and results:
    jsonio.write_json(os.path.join(workdir, 'eval_validation_last.json'), results,
                       sort_keys=True)
  return state, results


def _progress_bar(config, start, total):
  if not config.train.progress_bar:
    return None
  try:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return tqdm(total=total, initial=start, unit='step', dynamic_ncols=True)
