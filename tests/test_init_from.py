"""`config.init_from`: a fresh run starts from another run's weights where it has them."""

import logging

import jax
import numpy as np
import pytest

from mtl_jax import errors, runtime, train


@pytest.fixture(scope='module')
def pretrained(synthetic_data_dir, tmp_path_factory):
  """A reconstruction-only run (encoder + reconstruction decoder), 2 steps."""
  from mtl_jax.config import loader  # pylint: disable=g-import-not-at-top
  from conftest import REPO  # pylint: disable=g-import-not-at-top
  config = loader.load_config(str(REPO / 'configs' / 'default.py') + ':tiny')
  config.data.data_dir = synthetic_data_dir
  config.loss.weights = {'seg': 0.0, 'recon': 1.0, 'cls': 0.0}
  config.train.best_metric = 'recon_psnr'
  config.train.num_train_steps = 2
  config.train.eval_every_steps = config.train.checkpoint_every_steps = 2
  workdir = str(tmp_path_factory.mktemp('pretrained'))
  train.train_and_evaluate(config, workdir)
  return workdir


@pytest.mark.slow
def test_matching_parameters_load_and_the_rest_are_fresh(pretrained, tiny_config, caplog):
  tiny_config.init_from = pretrained
  trainer = train.Trainer(tiny_config)
  fresh = trainer.init(jax.random.key(0))
  with caplog.at_level(logging.INFO):
    state = train._init_from(jax.tree.map(lambda x: x, fresh), pretrained, trainer)
  source = runtime.load(pretrained).variables
  for name in ('encoder', 'recon_decoder'):
    for a, b in zip(jax.tree.leaves(state['params'][name]),
                    jax.tree.leaves(source['params'][name])):
      np.testing.assert_array_equal(a, b)
  for name in ('seg_decoder', 'classifier'):  # not in the source: as initialised
    for a, b in zip(jax.tree.leaves(state['params'][name]),
                    jax.tree.leaves(fresh['params'][name])):
      np.testing.assert_array_equal(a, b)
  message = next(r.getMessage() for r in caplog.records if 'init_from' in r.getMessage())
  assert 'loaded' in message and 'encoder, recon_decoder' in message
  assert 'classifier, seg_decoder' in message


@pytest.mark.slow
def test_fine_tuning_run_trains_from_them(pretrained, tiny_config, tmp_path, caplog):
  tiny_config.init_from = pretrained
  tiny_config.train.num_train_steps = 2
  with caplog.at_level(logging.INFO):
    state, results = train.train_and_evaluate(tiny_config, str(tmp_path))
  assert int(state['step']) == 2
  message = next(r.getMessage() for r in caplog.records if 'init_from' in r.getMessage())
  assert 'loaded' in message and 'encoder, recon_decoder' in message
  assert 0 <= results['dice'] <= 1 and 0 <= results['auc_covid'] <= 1
  # Every evaluation of a binary model records Dice at other lesion thresholds.
  sweep = results['threshold_sweep']
  at = sweep['thresholds'].index(0.5)
  assert sweep['dice'][at] == pytest.approx(results['dice'])


@pytest.mark.slow
def test_another_architecture_or_no_model_is_one_line(pretrained, tiny_config, tmp_path):
  tiny_config.model.widths = (4, 8)
  trainer = train.Trainer(tiny_config)
  with pytest.raises(errors.CheckpointError, match='another architecture .* differ in shape'):
    train._init_from(trainer.init(jax.random.key(0)), pretrained, trainer)
  with pytest.raises(errors.CheckpointError, match='no checkpoint found'):
    train._init_from(trainer.init(jax.random.key(0)), str(tmp_path / 'empty'), trainer)
