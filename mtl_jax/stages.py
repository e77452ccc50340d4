"""A training run in stages: self-supervised pre-training, then the three tasks.

With `config.train.pretrain_steps > 0`, `mtl-jax train` trains two stages in
one workdir: WORKDIR/pretrain learns masked-patch in-painting on every slice
(encoder + reconstruction decoder, no labels), then WORKDIR's three-task run
starts from that stage's kept checkpoint, exactly as `--config.init_from`
would. Each stage resumes on its own, so a killed run picks up in whichever
stage it was, and a finished stage is not trained again. config.json of
WORKDIR records the user's config (the stage's location is a fact of the
layout, not a setting).

The stage's config is derived here, in one place: the `pretrain` preset
(`configs/default.py`) applies the same overrides, so the two-command form
(`:pretrain`, then `--config.init_from=`) and the one-command form train the
same stage. This module imports no jax: config files import it.
"""

from __future__ import annotations

import json
import logging
import os

from mtl_jax import errors

PRETRAIN_DIR = 'pretrain'

# What makes a config the in-painting stage: reconstruction alone, from inputs
# with half of their 16-px squares blanked, kept by its clean reconstruction.
PRETRAIN_OVERRIDES = (
    ('loss.weights.seg', 0.0), ('loss.weights.recon', 1.0), ('loss.weights.cls', 0.0),
    ('loss.recon_mask_ratio', 0.5), ('train.best_metric', '-recon_mse'))

# Settings that only the three-task stage uses, off in the pre-training stage
# (so its config, and so its weights, do not depend on them).
THREE_TASK_ONLY_OFF = (
    ('loss.pseudo_weight', 0.0), ('data.pseudo_labels', ''),
    ('loss.normal_no_lesion_weight', 0.0), ('init_from', ''), ('train.pretrain_steps', 0))


def pretrain_config(config):
  """The pre-training stage of a run with `train.pretrain_steps > 0`: the same
  model, data and optimiser settings, the stage's task and length."""
  stage = config.copy_and_resolve_references()
  stage.update_from_flattened_dict(dict(PRETRAIN_OVERRIDES + THREE_TASK_ONLY_OFF))
  stage.train.num_train_steps = config.train.pretrain_steps
  stage.preset = f'{config.preset} (pretrain stage)'
  return stage


def train(config, workdir: str, interrupt_at_step: int | None = None):
  """`train.train_and_evaluate`, after the pre-training stage if the config
  has one. `interrupt_at_step` applies to the three-task stage (tests)."""
  from mtl_jax import checkpointing, train as train_lib  # pylint: disable=g-import-not-at-top
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
    init_from = os.path.join(workdir, PRETRAIN_DIR)
    done = checkpointing.select_step(init_from, 'latest')
    if done is not None and done >= steps:
      _check_same_stage(config, init_from)
      logging.info('pre-training stage finished in %s (step %d): not trained again',
                   init_from, done)
    else:
      logging.info('pre-training stage (%d steps) in %s, then the three tasks', steps,
                   init_from)
      train_lib.train_and_evaluate(pretrain_config(config), init_from)
  return train_lib.train_and_evaluate(config, workdir, interrupt_at_step,
                                      init_from=init_from)


def _check_same_stage(config, stage_dir: str):
  """A finished stage is reused only if this config derives the same one: a
  run restarted with other settings must not fine-tune from a stale stage."""
  from mtl_jax import config_loader  # pylint: disable=g-import-not-at-top
  path = os.path.join(stage_dir, 'config.json')
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise errors.CheckpointError(f'{path}: the finished pre-training stage has no '
                                 f'readable config ({e}); use a new --workdir') from None
  expected = json.loads(config_loader.to_json(pretrain_config(config)))
  differ = config_loader.differences(saved, expected, ignored=('preset',))
  if differ:
    raise errors.CheckpointError(
        f'{stage_dir} holds a pre-training stage of other settings ({", ".join(differ)}); '
        'use a new --workdir, or the settings it was trained with')
