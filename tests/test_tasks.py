"""A new task is one Task subclass and one registration line: this file adds a
toy fourth task (the slice's mean intensity, regressed from the bottleneck)
and trains, evaluates, restores and predicts (with flip TTA and as an
ensemble) a model with it, changing nothing in mtl_jax."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax import errors, evaluation, parallel, predict, runtime, tasks, train


class _MeanAccumulator:
  def __init__(self):
    self.errors = []

  def update(self, predicted, target):
    self.errors.extend(np.abs(np.asarray(predicted) - np.asarray(target)).tolist())


class IntensityTask(tasks.Task):
  """Regress each slice's mean intensity (an auxiliary task for the example)."""
  name = 'intensity'
  averaged = ('intensity',)  # a mean: TTA and ensembles average it (not a map)

  def head(self, model, bottom, skips, train):
    pooled = jnp.mean(bottom, axis=(1, 2)).astype(jnp.float32)
    return {'intensity': nn.Dense(1, name='intensity_head')(pooled)[:, 0]}

  def loss(self, outputs, batch):
    target = jnp.mean(batch['image'], axis=(1, 2))
    mse = jnp.sum(batch['valid'] * (outputs['intensity'] - target) ** 2) / jnp.maximum(
        jnp.sum(batch['valid']), 1.0)
    return mse, {'intensity_mse': mse}

  def predict(self, outputs):
    return {'intensity': outputs['intensity']}

  def accumulator(self):
    return _MeanAccumulator()

  def update(self, acc, predictions, batch):
    keep = batch['valid'] > 0
    acc.update(predictions['intensity'][keep], np.mean(batch['image'], axis=(1, 2))[keep])

  def summarize(self, acc, bootstrap=True, num_resamples=1000):
    return {'intensity_mae': float(np.mean(acc.errors))}, len(acc.errors)


@pytest.fixture
def with_intensity_task(monkeypatch):
  monkeypatch.setitem(tasks.TASK_CLASSES, IntensityTask.name, IntensityTask)  # the one line


@pytest.mark.slow
def test_a_fourth_task_trains_evaluates_and_restores(with_intensity_task, tiny_config,
                                                     tmp_path):
  tiny_config.loss.weights['intensity'] = 1.0
  tiny_config.train.num_train_steps = 2
  state, results = train.train_and_evaluate(tiny_config, str(tmp_path))
  assert 'intensity_head' in state['params']
  assert set(state['params']) == {'encoder', 'seg_decoder', 'recon_decoder',
                                  'classifier', 'intensity_head'}
  assert np.isfinite(results['intensity_mae'])
  assert results['dice'] is not None and results['auc_covid'] is not None
  restored = evaluation.evaluate_workdir(str(tmp_path), 'validation', which='latest')
  assert restored['intensity_mae'] == pytest.approx(results['intensity_mae'])
  loaded = runtime.load(str(tmp_path), 'latest')
  assert tuple(loaded.runtime.tasks) == ('seg', 'recon', 'cls', 'intensity')

  # Predict: flip TTA averages the task's output over the slice and its mirror.
  images = np.random.default_rng(0).random((8, 64, 64), np.float32)
  run = lambda fn, v, x: parallel.to_host(fn(v, parallel.global_batch(
      {'image': x}, loaded.runtime.mesh)['image']))
  plain = loaded.runtime.predict_fn()
  once = run(plain, loaded.variables, images)['intensity']
  mirrored = run(plain, loaded.variables, images[:, :, ::-1].copy())['intensity']
  tta = run(loaded.runtime.predict_fn(tta=True), loaded.variables, images)['intensity']
  np.testing.assert_allclose(tta, (once + mirrored) / 2, rtol=1e-5, atol=1e-6)
  # An ensemble averages it over members.
  ensemble = predict.Predictor([str(tmp_path), str(tmp_path)], batch_size=8, which='latest')
  other = jax.tree.map(lambda x: x * 1.1 if x.dtype == np.float32 else x,
                       ensemble.member_variables[0])
  ensemble.member_variables = [other]
  second = run(plain, other, images)['intensity']
  np.testing.assert_allclose(ensemble.predict_batch(images)['intensity'],
                             (once + second) / 2, rtol=1e-5, atol=1e-6)


def test_an_unknown_task_weight_is_a_config_error(tiny_config):
  tiny_config.loss.weights['intensity'] = 1.0  # not registered here
  with pytest.raises(errors.ConfigError, match=r"unknown tasks \['intensity'\]; tasks: seg, "):
    runtime.Runtime(tiny_config)
