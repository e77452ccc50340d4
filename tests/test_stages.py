"""Issue 13's training stages: self-training, masked-patch pre-training, progressive resizing.

Each stage runs end to end on the tiny preset and resumes mid-way to the
same parameters as an uninterrupted run.
"""

import json
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax import checkpointing, cli, errors, losses, parallel, runtime, train
from mtl_jax.data import datasets, pipeline, pseudo_labels


def _train_interrupted_and_straight(config, tmp_path, name):
  """(params of a run killed after step 2 and resumed, params of one that was not)."""
  config.train.num_train_steps = 4
  config.train.checkpoint_every_steps = 2
  config.train.eval_every_steps = 4
  config.eval.bootstrap_resamples = 0
  resumed, straight = str(tmp_path / f'{name}_resumed'), str(tmp_path / f'{name}_straight')
  train.train_and_evaluate(config, resumed, interrupt_at_step=3)
  # Killed after step 3: only step 2's checkpoint survives, so the resume has work to do.
  assert checkpointing.select_step(resumed, 'latest') == 2
  state, _ = train.train_and_evaluate(config, resumed)
  assert int(state['step']) == 4
  other, results = train.train_and_evaluate(config, straight)
  return jax.device_get(state['params']), jax.device_get(other['params']), results


def _assert_equal_trees(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


@pytest.fixture
def private_data(tiny_config, tmp_path):
  data_dir = tmp_path / 'data'
  shutil.copytree(tiny_config.data.data_dir, data_dir)
  tiny_config.data.data_dir = str(data_dir)
  return str(data_dir)


# --- self-training --------------------------------------------------------------------


@pytest.mark.slow
def test_pseudo_label_command_then_a_student(model_dir, tiny_config, private_data, tmp_path):
  assert cli.main(['pseudo-label', '--workdir', model_dir, '--dataset', 'synthetic_ct',
                   '--data_dir', private_data, '--name', 'round1']) == 0
  source = datasets.load_split('synthetic_ct', 'train', private_data, 64)
  assert pseudo_labels.available(source.path) == ['round1']
  record = pseudo_labels.read_record(source.path, 'round1')
  assert record['num_examples'] == len(source) and record['teacher_step'] == 2
  labelled = pseudo_labels.WithPseudoLabels(source, 'round1')
  has_mask = np.array([float(source[i]['has_mask']) for i in range(len(source))])
  # Only slices without ground truth get a pseudo label ...
  np.testing.assert_array_equal(labelled.has_soft_mask, has_mask == 0)
  # ... and it is the teacher's lesion probability, stored to 1/255.
  i = int(np.flatnonzero(has_mask == 0)[0])
  teacher = runtime.load(model_dir)
  images = jnp.asarray(np.stack([source[i]['image']] * 16))
  prob = np.asarray(teacher.runtime.predict_fn()(teacher.variables, images)['seg_prob'][0])
  np.testing.assert_allclose(labelled[i]['soft_mask'], prob, atol=0.5 / 255 + 1e-6)
  assert float(labelled[i]['has_soft_mask']) == 1.0
  j = int(np.flatnonzero(has_mask > 0)[0])  # ground truth wins where it exists
  assert float(labelled[j]['has_soft_mask']) == 0.0

  tiny_config.data.pseudo_labels = 'round1'
  tiny_config.loss.pseudo_weight = 0.5
  batch = pipeline.train_dataset(tiny_config)[0]
  np.testing.assert_array_equal(batch['has_soft_mask'], 1.0 - batch['has_mask'])
  trainer = train.Trainer(tiny_config)
  _, terms = trainer.train_step(trainer.init(jax.random.key(0)),
                                parallel.global_batch(batch, trainer.mesh))
  assert float(terms['pseudo_loss']) > 0
  resumed, straight, results = _train_interrupted_and_straight(tiny_config, tmp_path,
                                                               'student')
  _assert_equal_trees(resumed, straight)
  meta, _ = checkpointing.read_meta(str(tmp_path / 'student_straight'), 'latest')
  provenance = meta['preprocessing']['built']['synthetic_ct']['pseudo_labels']
  assert provenance['teacher_step'] == 2 and provenance['num_examples'] == len(source)
  # Pseudo labels never reach evaluation: Dice counts the validation masks only.
  validation = datasets.load_split('synthetic_ct', 'validation', private_data, 64)
  masked = sum(float(validation[k]['has_mask']) > 0
               for k in range(min(len(validation), tiny_config.eval.max_examples)))
  assert results['num_seg_examples'] == masked

  # The set remade under the same name (another teacher) while a student is
  # stopped mid-run: resuming would change its targets, so it is refused.
  stopped = str(tmp_path / 'student_stopped')
  train.train_and_evaluate(tiny_config, stopped, interrupt_at_step=3)
  soft = np.stack([labelled[k]['soft_mask'] for k in range(len(source))])
  pseudo_labels.write(source.path, 'round1', soft, has_mask == 0, None,
                      {'teacher': 'another run', 'teacher_step': 7})
  with pytest.raises(errors.CheckpointError, match='synthetic_ct: pseudo_labels'):
    train.train_and_evaluate(tiny_config, stopped)


def test_pseudo_label_sets_bad_input(model_dir, tiny_config, private_data, capsys):
  tiny_config.data.pseudo_labels = 'nope'
  with pytest.raises(errors.ConfigError, match="no training source has that label set"):
    pipeline.check_built(tiny_config)
  assert cli.main(['pseudo-label', '--workdir', str(private_data), '--dataset',
                   'synthetic_ct', '--data_dir', private_data]) == 2
  assert 'error' in capsys.readouterr().err
  assert cli.main(['pseudo-label', '--workdir', model_dir, '--dataset', 'mosmed',
                   '--data_dir', private_data]) == 2
  assert "dataset 'mosmed'" in capsys.readouterr().err
  # A set made for another build of the dataset: one line, not a crash mid-run.
  source = datasets.load_split('synthetic_ct', 'train', private_data, 64)
  pseudo_labels.write(source.path, 'stale', np.zeros((3, 64, 64)), np.ones(3, bool),
                      None, {})
  tiny_config.data.pseudo_labels = 'stale'
  with pytest.raises(errors.ConfigError, match='rerun mtl-jax pseudo-label'):
    pipeline.check_built(tiny_config)
  with pytest.raises(errors.ConfigError, match='plain folder name'):
    pseudo_labels.write(source.path, '../x', np.zeros((3, 64, 64)), np.ones(3, bool),
                        None, {})


# --- self-supervised pre-training -------------------------------------------------------


def test_masked_patches_blank_whole_squares_at_the_ratio():
  images = jnp.ones((64, 32, 32))
  out = np.asarray(losses.mask_patches(images, jax.random.key(0), 0.5, 8))
  blocks = out.reshape(64, 4, 8, 4, 8)
  per_block = blocks.mean(axis=(2, 4))
  assert set(np.unique(per_block)) == {0.0, 1.0}  # a square is blanked whole or kept
  assert abs(1 - out.mean() - 0.5) < 0.05
  np.testing.assert_array_equal(
      losses.mask_patches(images, jax.random.key(0), 0.0, 8), images)


def test_lower_is_better_metrics_rank_with_a_minus():
  results = {'recon_mse': 0.02, 'dice': 0.5}
  assert checkpointing.selection_value(results, '-recon_mse') == -0.02
  assert checkpointing.selection_value(results, 'dice+-recon_mse') == pytest.approx(0.24)


@pytest.mark.slow
def test_pretrain_stage_resumes_and_feeds_a_fine_tune(tiny_config, tmp_path, caplog):
  from mtl_jax.config import loader  # pylint: disable=g-import-not-at-top
  from conftest import REPO  # pylint: disable=g-import-not-at-top
  config = loader.load_config(str(REPO / 'configs' / 'default.py') + ':tiny,pretrain')
  config.data.data_dir = tiny_config.data.data_dir
  assert config.loss.recon_mask_ratio > 0 and config.train.best_metric == '-recon_mse'
  resumed, straight, results = _train_interrupted_and_straight(config, tmp_path, 'pre')
  _assert_equal_trees(resumed, straight)
  assert set(resumed) == {'encoder', 'recon_decoder'}
  meta, _ = checkpointing.read_meta(str(tmp_path / 'pre_straight'), 'best')
  assert meta['selection'] == {'best_metric': '-recon_mse', 'value': -results['recon_mse']}
  tiny_config.init_from = str(tmp_path / 'pre_straight')
  tiny_config.train.num_train_steps = 2
  tiny_config.train.eval_every_steps = tiny_config.train.checkpoint_every_steps = 2
  with caplog.at_level(logging.INFO):
    state, _ = train.train_and_evaluate(tiny_config, str(tmp_path / 'fine'))
  assert int(state['step']) == 2
  message = next(r.getMessage() for r in caplog.records if 'init_from' in r.getMessage())
  assert 'loaded' in message and 'encoder, recon_decoder' in message


@pytest.mark.slow
def test_pretrain_steps_trains_both_stages_in_one_workdir_and_resumes_in_either(
    tiny_config, tmp_path, caplog):
  """`train.pretrain_steps`: WORKDIR/pretrain first, then the three tasks from
  it; a run killed in the stage, resumed, equals one that was not, and a
  finished stage is reused only by a config that derives the same stage."""
  from mtl_jax.config import stages  # pylint: disable=g-import-not-at-top
  config = tiny_config
  config.train.pretrain_steps = 4
  config.train.num_train_steps = 2
  config.train.eval_every_steps = config.train.checkpoint_every_steps = 2
  config.eval.bootstrap_resamples = 0
  killed, straight = str(tmp_path / 'killed'), str(tmp_path / 'straight')
  stage = stages.pretrain_config(config)
  assert stage.train.num_train_steps == 4 and stage.train.pretrain_steps == 0
  assert stage.loss.recon_mask_ratio > 0 and stage.train.best_metric == '-recon_mse'
  train.train_and_evaluate(stage, os.path.join(killed, 'pretrain'), interrupt_at_step=3)
  assert checkpointing.select_step(os.path.join(killed, 'pretrain'), 'latest') == 2
  resumed, _ = train.train_in_stages(config, killed)
  other, _ = train.train_in_stages(config, straight)
  _assert_equal_trees(jax.device_get(resumed['params']), jax.device_get(other['params']))
  for workdir in (killed, straight):
    assert checkpointing.select_step(os.path.join(workdir, 'pretrain'), 'latest') == 4
    assert checkpointing.select_step(workdir, 'latest') == 2
  with open(os.path.join(straight, 'config.json')) as f:
    assert json.load(f)['init_from'] == ''  # the user's config, not the layout

  # Restarted once the stage has finished: it is not trained again.
  again = str(tmp_path / 'again')
  shutil.copytree(os.path.join(straight, 'pretrain'), os.path.join(again, 'pretrain'))
  train.train_in_stages(config, again, interrupt_at_step=1)
  with caplog.at_level(logging.INFO):
    state, _ = train.train_in_stages(config, again)
  assert 'not trained again' in caplog.text and int(state['step']) == 2
  _assert_equal_trees(jax.device_get(state['params']), jax.device_get(other['params']))

  other_data = config.copy_and_resolve_references()
  other_data.data.rotate_deg = 3.0
  shutil.rmtree(again)
  shutil.copytree(os.path.join(straight, 'pretrain'), os.path.join(again, 'pretrain'))
  with pytest.raises(errors.CheckpointError, match='pre-training stage of other settings'
                     r'.*data\.rotate_deg'):
    train.train_in_stages(other_data, again)
  both = config.copy_and_resolve_references()
  both.init_from = straight
  with pytest.raises(errors.ConfigError, match='both give the run its starting weights'):
    train.train_in_stages(both, str(tmp_path / 'both'))


# --- progressive resizing ------------------------------------------------------------


@pytest.mark.slow
def test_resolution_switch_trains_small_then_full_and_resumes_across_it(tiny_config,
                                                                        tmp_path):
  tiny_config.data.train_size_schedule = ((32, 2),)
  data = pipeline.train_dataset(tiny_config)
  assert data[1]['image'].shape[1:] == (32, 32)  # batch 1 is step 2
  assert data[2]['image'].shape[1:] == (64, 64)
  assert data[1]['mask'].shape[1:] == data[1]['soft_mask'].shape[1:] == (32, 32)
  resumed, straight, results = _train_interrupted_and_straight(tiny_config, tmp_path, 'res')
  _assert_equal_trees(resumed, straight)
  assert results['num_examples'] > 0
  for bad in (((64, 2),), ((30, 2),), ((32, 3), (48, 2))):
    tiny_config.data.train_size_schedule = bad
    with pytest.raises(errors.ConfigError, match='train_size_schedule'):
      pipeline.train_dataset(tiny_config)


def test_history_records_every_evaluation(model_dir):
  with open(os.path.join(model_dir, 'validation_history.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  assert [r['step'] for r in rows] == [2] and 'validation/recon_mse' in rows[0]
