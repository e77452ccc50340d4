"""`mtl-jax predict` with several checkpoints: an ensemble (nnU-Net's fold ensemble)."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from mtl_jax import checkpointing, cli, predict

from test_predict import oblique_nifti, synthetic_volume


def test_an_ensemble_averages_its_members_probabilities(model_dir, predictor):
  ensemble = predict.Predictor([model_dir, model_dir], batch_size=8)
  assert len(ensemble.member_variables) == 1 and len(ensemble.members) == 2
  # A member with other weights: the ensemble's lesion and class
  # probabilities are the mean of what each member alone predicts.
  other = jax.tree.map(lambda x: x * 1.5 if x.dtype == np.float32 else x,
                       ensemble.member_variables[0])
  ensemble.member_variables = [other]
  images = np.random.default_rng(0).random((8, 64, 64), np.float32)
  alone = predictor.predict_batch(images)
  single = predict.Predictor(model_dir, batch_size=8)
  single.variables = other
  second = single.predict_batch(images)
  both = ensemble.predict_batch(images)
  for key in ('seg', 'cls_probs'):
    assert not np.allclose(alone[key], second[key])  # the members do differ
    np.testing.assert_allclose(both[key], (alone[key] + second[key]) / 2, atol=1e-6)
  # The OOD inputs are the first member's: its reference is what they are scored against.
  for key in ('recon_mse', 'features'):
    np.testing.assert_allclose(both[key], alone[key], rtol=1e-6)


def test_ensemble_from_the_cli_reports_every_member(model_dir, tmp_path):
  vol, _ = synthetic_volume(size=64, n=3, seed=4)
  oblique_nifti(tmp_path / 'study.nii.gz', vol, (5.6, 5.6, 5.0), ('L', 'P', 'S'))
  copy = tmp_path / 'copy'
  shutil.copytree(model_dir, copy)
  for out, checkpoints in (('one', [model_dir]), ('two', [model_dir, str(copy)])):
    assert cli.main(['predict', '--workdir', *checkpoints, '--input',
                     str(tmp_path / 'study.nii.gz'), '--output', str(tmp_path / out)]) == 0
  one, two = (json.loads((tmp_path / o / 'report.json').read_text()) for o in ('one', 'two'))
  assert [m['workdir'] for m in two['checkpoint']['members']] == [
      os.path.abspath(model_dir), str(copy)]
  assert len(one['checkpoint']['members']) == 1
  assert two['checkpoint']['workdir'] == one['checkpoint']['workdir']
  # Two copies of one model: the mean is that model's prediction.
  assert two['classification']['probabilities'] == pytest.approx(
      one['classification']['probabilities'], abs=1e-6)
  assert two['lesion']['volume_ml'] == pytest.approx(one['lesion']['volume_ml'])


def test_members_that_differ_are_refused_in_one_line(model_dir, tmp_path, capsys):
  vol, _ = synthetic_volume(size=64, n=2, seed=5)
  oblique_nifti(tmp_path / 'study.nii.gz', vol, (5.6, 5.6, 5.0), ('L', 'P', 'S'))
  other = tmp_path / 'other_window'
  shutil.copytree(model_dir, other)
  _, path = checkpointing.read_meta(str(other))
  meta_file = os.path.join(path, 'meta', 'metadata')
  with open(meta_file) as f:
    meta = json.load(f)
  meta['preprocessing']['window_hu'] = [-1350.0, 150.0]  # trained with another window
  with open(meta_file, 'w') as f:
    json.dump(meta, f)
  with pytest.raises(predict.EnsembleMismatchError, match='window_hu'):
    predict.Predictor([model_dir, str(other)])
  code = cli.main(['predict', '--workdir', model_dir, str(other), '--input',
                   str(tmp_path / 'study.nii.gz'), '--output', str(tmp_path / 'out')])
  err = capsys.readouterr().err.strip()
  assert code == 2 and len(err.splitlines()) == 1
  assert 'other_window' in err and 'preprocessing' in err and 'window_hu' in err
  assert not (tmp_path / 'out').exists()
  # A member without a model fails before anything is built, as a single one does.
  (tmp_path / 'empty').mkdir()
  assert cli.main(['predict', '--workdir', model_dir, str(tmp_path / 'empty'), '--input',
                   str(tmp_path / 'study.nii.gz'), '--output', str(tmp_path / 'out')]) == 2
  assert 'empty' in capsys.readouterr().err
