"""End to end on the `tiny` preset, data-parallel over 8 simulated CPU devices."""

import json
import os

import jax
import numpy as np
import pytest

from mtl_jax import checkpointing, cli, errors, evaluation, parallel, train
from mtl_jax.data import datasets, pipeline

EVAL_KEYS = ('dice', 'iou', 'hd95', 'accuracy', 'auc_covid', 'auc_macro',
             'recon_mse', 'confusion_matrix', 'num_examples')


def _first_batch(config):
  return pipeline.train_dataset(config)[0]


def test_eight_devices_are_simulated():
  assert jax.device_count() == 8


@pytest.mark.slow
def test_one_step_end_to_end(tiny_config, tmp_path):
  tiny_config.train.num_train_steps = 1
  state, results = train.train_and_evaluate(tiny_config, str(tmp_path))
  assert int(state['step']) == 1
  for key in EVAL_KEYS:
    assert key in results
  for key in ('dice', 'iou', 'accuracy', 'auc_covid', 'auc_macro'):
    assert 0 <= results[key] <= 1, key  # scored, even after one step
  assert 0 <= results['recon_mse'] < 1 and results['hd95'] >= 0
  assert np.sum(results['confusion_matrix']) == results['num_examples']
  assert results['num_examples'] == tiny_config.eval.max_examples
  assert os.path.exists(tmp_path / 'checkpoints' / '1')
  assert os.path.exists(tmp_path / 'best' / '1')
  assert any(f.startswith('events.out.tfevents')
             for f in os.listdir(tmp_path / 'tensorboard'))


@pytest.mark.slow  # over 20 s on 2 cores
def test_sharded_step_matches_single_device(tiny_config):
  batch = _first_batch(tiny_config)
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    trainer = train.Trainer(tiny_config, devices=devices)
    assert trainer.mesh.size == len(devices)
    state = trainer.init(jax.random.key(0))
    state, terms = trainer.train_step(state, parallel.global_batch(batch, trainer.mesh))
    results.append(jax.device_get((state['params'], state['batch_stats'], terms)))
  (p1, s1, t1), (p8, s8, t8) = results
  np.testing.assert_allclose(t1['loss'], t8['loss'], rtol=1e-5)
  for a, b in zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p8, s8))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_save_restore_gives_identical_evaluation(tiny_config, tmp_path):
  tiny_config.train.num_train_steps = 2
  workdir = str(tmp_path)
  _, in_training = train.train_and_evaluate(tiny_config, workdir)
  restored = evaluation.evaluate_workdir(workdir, 'validation', which='latest')
  for key in ('dice', 'accuracy', 'auc_covid', 'recon_mse', 'confusion_matrix'):
    assert restored[key] == in_training[key], key
  written = json.loads((tmp_path / 'eval_validation_latest.json').read_text())
  assert written['dice'] == restored['dice']
  meta, _ = checkpointing.read_meta(workdir)
  assert meta['preprocessing']['window_hu'] == list(tiny_config.data.window_hu)
  assert meta['config']['model']['widths'] == list(tiny_config.model.widths)
  reference = meta['ood_reference']
  assert len(reference['percentiles']) == 101
  assert reference['percentiles'] == sorted(reference['percentiles'])


@pytest.mark.slow
def test_kill_and_resume_continues_the_same_trajectory(tiny_config, tmp_path):
  tiny_config.train.num_train_steps = 4
  tiny_config.train.checkpoint_every_steps = 2
  tiny_config.train.eval_every_steps = 100  # only at the end
  straight, _ = train.train_and_evaluate(tiny_config, str(tmp_path / 'a'))
  # Killed after step 3: the last checkpoint is step 2, step 3 is lost.
  train.train_and_evaluate(tiny_config, str(tmp_path / 'b'), interrupt_at_step=3)
  assert checkpointing.Checkpointer(str(tmp_path / 'b')).latest_step() == 2
  resumed, _ = train.train_and_evaluate(tiny_config, str(tmp_path / 'b'))
  assert int(resumed['step']) == 4
  for a, b in zip(jax.tree.leaves(jax.device_get(straight['params'])),
                  jax.tree.leaves(jax.device_get(resumed['params']))):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  # Every kept checkpoint can be restored by its step (bench/checkpoint_average.py).
  ckpt = checkpointing.Checkpointer(str(tmp_path / 'a'), read_only=True)
  try:
    assert ckpt.kept_steps() == [2, 4]
    target = train.Trainer(tiny_config).restore_target()
    assert [int(ckpt.restore(target, step=s)[0]['step']) for s in (2, 4)] == [2, 4]
  finally:
    ckpt.close()


def test_resumed_data_iterator_yields_the_same_batches(tiny_config):
  dataset = pipeline.train_dataset(tiny_config)
  full = [b for _, b in zip(range(5), pipeline.iterate(dataset, 0, tiny_config))]
  resumed = [b for _, b in zip(range(2), pipeline.iterate(dataset, 3, tiny_config))]
  assert len(full) == 5 and len(resumed) == 2
  for a, b in zip(full[3:], resumed, strict=True):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.slow
def test_incompatible_checkpoint_is_refused(tiny_config, tmp_path):
  tiny_config.train.num_train_steps = 1
  train.train_and_evaluate(tiny_config, str(tmp_path))
  tiny_config.model.widths = (4, 8)
  with pytest.raises(checkpointing.CheckpointError, match='incompatible config.*model'):
    train.train_and_evaluate(tiny_config, str(tmp_path))


def test_batch_not_divisible_by_devices_fails_before_compiling(tiny_config):
  tiny_config.train.global_batch_size = 12
  with pytest.raises(errors.ConfigError, match='not divisible by the 8 devices'):
    train.Trainer(tiny_config)


@pytest.mark.slow
def test_nan_loss_stops_with_the_step(tiny_config, tmp_path):
  tiny_config.optim.learning_rate = float('nan')
  tiny_config.train.num_train_steps = 3
  with pytest.raises(errors.TrainingDivergedError, match='non-finite .* at step 1'):
    train.train_and_evaluate(tiny_config, str(tmp_path))
  assert not os.path.exists(tmp_path / 'checkpoints' / '1')


def test_nan_is_reported_with_its_exact_step_among_pending():
  pending = [(5, {'loss': np.float32(1.0)}), (6, {'loss': np.float32(np.nan)}),
             (7, {'loss': np.float32(np.nan)})]
  with pytest.raises(errors.TrainingDivergedError, match='non-finite loss at step 6'):
    train._flush_metrics(pending, writer=None, timing={})


def test_missing_dataset_is_one_line(tmp_path, capsys):
  code = cli.main(['train', '--config', 'configs/default.py:tiny', '--workdir',
                   str(tmp_path / 'w'), f'--config.data.data_dir={tmp_path}'])
  err = capsys.readouterr().err.strip()
  assert code == 2
  assert len(err.splitlines()) == 1
  assert 'synthetic_ct' in err and str(tmp_path) in err


def test_cli_bad_config_and_missing_checkpoint(tmp_path, capsys):
  assert cli.main(['train', '--config', 'configs/default.py:nope',
                   '--workdir', str(tmp_path)]) == 2
  assert 'valid presets' in capsys.readouterr().err
  assert cli.main(['evaluate', '--workdir', str(tmp_path / 'empty')]) == 2
  assert 'no checkpoint found' in capsys.readouterr().err


@pytest.mark.slow
def test_cli_train_then_evaluate(tiny_config, tmp_path, capsys):
  workdir = str(tmp_path / 'run')
  args = ['--config.data.data_dir=' + tiny_config.data.data_dir,
          '--config.train.num_train_steps=2']
  assert cli.main(['train', '--config', 'configs/default.py:tiny',
                   '--workdir', workdir] + args) == 0
  console = capsys.readouterr().err
  assert 'validation/dice=' in console  # the metric lines stay on the console
  assert '[process=' not in console and 'orbax' not in console  # library chatter...
  with open(os.path.join(workdir, 'mtl-jax.log')) as f:
    assert 'orbax' in f.read()  # ...goes to the workdir's log file
  assert cli.main(['evaluate', '--workdir', workdir, '--split', 'test']) == 0
  assert '| Dice (pooled) |' in capsys.readouterr().out
  assert json.loads(open(os.path.join(workdir, 'eval_test.json')).read())['split'] == 'test'


def test_missing_dataset_error_type(tmp_path, tiny_config):
  tiny_config.data.data_dir = str(tmp_path)
  with pytest.raises(datasets.DatasetNotFoundError):
    pipeline.train_dataset(tiny_config)


def test_bf16_compute_keeps_f32_params_and_close_loss(tiny_config):
  batch = _first_batch(tiny_config)
  losses = {}
  for dtype in ('float32', 'bfloat16'):
    tiny_config.model.compute_dtype = dtype
    trainer = train.Trainer(tiny_config)
    state = trainer.init(jax.random.key(0))
    state, terms = trainer.train_step(state, parallel.global_batch(batch, trainer.mesh))
    assert all(p.dtype == np.float32 for p in jax.tree.leaves(state['params']))
    losses[dtype] = float(terms['loss'])
  assert losses['bfloat16'] == pytest.approx(losses['float32'], rel=0.03)


def test_per_source_metrics_become_tensorboard_scalars():
  results = {'dice': 0.7, 'split': 'validation', 'num_examples': 5, 'auc_covid': None,
             'by_source': {'covid_ct': {'auc_covid': 0.8, 'dice': None, 'accuracy': 0.9}}}
  assert evaluation.scalars(results, 'validation') == {
      'validation/dice': 0.7, 'validation/num_examples': 5,
      'validation/by_source/covid_ct/auc_covid': 0.8,
      'validation/by_source/covid_ct/accuracy': 0.9}


def test_best_checkpoint_selection_value():
  results = {'dice': 0.7, 'auc_covid': 0.9, 'accuracy': float('nan'),
             'by_source': {'covid_ct': {'auc_covid': 0.8}}}
  assert checkpointing.selection_value(results, 'dice') == 0.7
  assert checkpointing.selection_value(results, 'dice+auc_covid') == pytest.approx(0.8)
  assert checkpointing.selection_value(
      results, 'dice + by_source/covid_ct/auc_covid') == pytest.approx(0.75)
  assert checkpointing.selection_value(results, 'dice+accuracy') is None  # undefined: skip
  with pytest.raises(errors.ConfigError, match="no 'by_source/mosmed/auc_covid'"):
    checkpointing.selection_value(results, 'by_source/mosmed/auc_covid')
