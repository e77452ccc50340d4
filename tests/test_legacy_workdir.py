"""A run folder written by mtl-jax 0.1.0 (tests/data/workdir_0.1.0, made before
the package re-layout) still predicts and evaluates with today's code."""

import json
import pathlib
import shutil

import pytest

from mtl_jax import cli

from test_predict import oblique_nifti, synthetic_volume

LEGACY = pathlib.Path(__file__).parent / 'data' / 'workdir_0.1.0'


@pytest.fixture
def legacy(tmp_path) -> str:
  workdir = tmp_path / 'legacy'
  shutil.copytree(LEGACY, workdir)  # evaluate writes beside the checkpoints
  return str(workdir)


def test_legacy_workdir_predicts(legacy, tmp_path):
  vol, _ = synthetic_volume(size=64, n=3, seed=4)
  oblique_nifti(tmp_path / 'study.nii.gz', vol, (5.6, 5.6, 5.0), ('L', 'P', 'S'))
  for which in ('best', 'latest'):
    out = tmp_path / which
    assert cli.main(['predict', '--workdir', legacy, '--checkpoint', which, '--input',
                     str(tmp_path / 'study.nii.gz'), '--output', str(out)]) == 0
    rep = json.loads((out / 'report.json').read_text())
    assert rep['checkpoint']['step'] == 2
    assert sum(rep['classification']['probabilities'].values()) == pytest.approx(1.0, abs=1e-4)
    assert (out / 'lesion_mask.nii.gz').exists()


def test_legacy_workdir_evaluates_to_its_recorded_figures(legacy, synthetic_data_dir, capsys):
  """The same synthetic build (same seed and sizes) as the run saw: the
  restored model gives the validation figures the run recorded."""
  assert cli.main(['evaluate', '--workdir', legacy, '--split', 'validation',
                   f'--config.data.data_dir={synthetic_data_dir}']) == 0
  assert 'dice' in capsys.readouterr().out.lower()
  recorded = json.loads((LEGACY / 'eval_validation_last.json').read_text())
  now = json.loads((pathlib.Path(legacy) / 'eval_validation.json').read_text())
  for key in ('dice', 'auc_covid', 'accuracy', 'recon_mse'):
    assert now[key] == pytest.approx(recorded[key], rel=1e-4, abs=1e-6), key
