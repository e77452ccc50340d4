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
(`mtl_jax/config/schema.py`) applies the same overrides, so the two-command form
(`:pretrain`, then `--config.init_from=`) and the one-command form train the
same stage. This module imports no jax and nothing above it: the schema
imports it. The runner that trains the stages is `train.train_in_stages`.
"""

from __future__ import annotations

from mtl_jax.config import ingredients

PRETRAIN_DIR = 'pretrain'

# What makes a config the in-painting stage: reconstruction alone, from inputs
# with half of their 16-px squares blanked, kept by its clean reconstruction.
PRETRAIN_OVERRIDES = (
    ('loss.weights.seg', 0.0), ('loss.weights.recon', 1.0), ('loss.weights.cls', 0.0),
    ('loss.recon_mask_ratio', 0.5), ('train.best_metric', '-recon_mse'))


def pretrain_config(config):
  """The pre-training stage of a run with `train.pretrain_steps > 0`: the same
  model, data and optimiser settings, the stage's task and length."""
  stage = config.copy_and_resolve_references()
  stage.update_from_flattened_dict(dict(PRETRAIN_OVERRIDES + ingredients.THREE_TASK_ONLY_OFF))
  stage.train.num_train_steps = config.train.pretrain_steps
  stage.preset = f'{config.preset} (pretrain stage)'
  return stage
