"""An exported model (mtl_jax/exported.py, `mtl-jax export-model`): smaller
weights with the checkpoint's record, validation measured on them, a model
card; predict and evaluate take it as they take a workdir, and predict uses
the shipped one when no --workdir is given."""

import json

import numpy as np
import pytest

from mtl_jax import cli, exported, predict

from test_predict import oblique_nifti, synthetic_volume


@pytest.fixture(scope='module')
def export(model_dir, tmp_path_factory):
  dest = tmp_path_factory.mktemp('exported') / 'model'
  assert cli.main(['export-model', '--workdir', model_dir, '--output', str(dest)]) == 0
  return dest


def test_export_holds_small_weights_its_record_and_a_card(export, model_dir):
  assert sorted(p.name for p in export.iterdir()) == [
      'MODEL_CARD.md', 'eval_validation.json', 'model.json', 'variables.msgpack']
  meta = json.loads((export / 'model.json').read_text())
  assert meta['export']['dtype'] == 'float16' and meta['export']['step'] == 2
  assert set(meta) >= {'config', 'preprocessing', 'tasks', 'ood_features', 'export'}
  card = (export / 'MODEL_CARD.md').read_text()
  assert 'Research use only' in card and '| `synthetic_ct` | 1 |' in card
  validation = json.loads((export / 'eval_validation.json').read_text())
  assert f'| Dice (pooled) | {validation["dice"]:.3f}' in card
  # float16 against the float32 checkpoint: recorded, and small here.
  differences = meta['export']['float32_differences']
  assert abs(differences['dice']) < 0.02 and abs(differences['recon_mse']) < 1e-3


def test_exported_weights_predict_as_the_checkpoint_does(export, model_dir):
  images = np.random.default_rng(0).random((8, 64, 64), np.float32)
  full = predict.Predictor(model_dir, batch_size=8).predict_batch(images)
  small = predict.Predictor(str(export), batch_size=8).predict_batch(images)
  np.testing.assert_allclose(small['cls_probs'], full['cls_probs'], atol=5e-3)
  np.testing.assert_allclose(small['seg'], full['seg'], atol=5e-3)


def test_predict_uses_the_shipped_model_without_a_workdir(export, monkeypatch, tmp_path,
                                                          capsys):
  monkeypatch.setattr(exported, 'SHIPPED', export)
  vol, _ = synthetic_volume(size=64, n=2, seed=6)
  oblique_nifti(tmp_path / 'study.nii.gz', vol, (5.6, 5.6, 5.0), ('L', 'P', 'S'))
  assert cli.main(['predict', '--input', str(tmp_path / 'study.nii.gz'),
                   '--output', str(tmp_path / 'out')]) == 0
  err = capsys.readouterr().err
  assert ('mtl-jax predict: no --workdir given: using the model shipped with mtl-jax '
          f'({export};') in err
  rep = json.loads((tmp_path / 'out' / 'report.json').read_text())
  assert rep['checkpoint']['which'] == 'exported' and rep['checkpoint']['step'] == 2


def test_export_never_replaces_a_folder_that_is_not_a_model(model_dir, tmp_path, capsys):
  (tmp_path / 'mine').mkdir()
  (tmp_path / 'mine' / 'notes.txt').write_text('keep me')
  assert cli.main(['export-model', '--workdir', model_dir, '--output',
                   str(tmp_path / 'mine')]) == 2
  assert 'is not empty and holds no exported model' in capsys.readouterr().err
  assert (tmp_path / 'mine' / 'notes.txt').read_text() == 'keep me'
