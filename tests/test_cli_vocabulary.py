"""One vocabulary in the CLI (issue 38): --workdir is a run folder and
--checkpoint best|latest which checkpoint, in every verb; the spellings of
mtl-jax 0.1.0 still work for a release, each with a one-line deprecation."""

import json

import pytest

from mtl_jax import cli

from test_predict import oblique_nifti, synthetic_volume


@pytest.fixture
def study(tmp_path):
  vol, _ = synthetic_volume(size=64, n=2, seed=7)
  oblique_nifti(tmp_path / 'study.nii.gz', vol, (5.6, 5.6, 5.0), ('L', 'P', 'S'))
  return str(tmp_path / 'study.nii.gz')


def _report(folder):
  return json.loads((folder / 'report.json').read_text())


def test_old_predict_spellings_work_and_say_what_to_use(model_dir, study, tmp_path, capsys):
  assert cli.main(['predict', '--workdir', model_dir, '--checkpoint', 'latest',
                   '--input', study, '--output', str(tmp_path / 'new')]) == 0
  assert 'deprecated' not in capsys.readouterr().err
  assert cli.main(['predict', '--checkpoint', model_dir, '--which', 'latest',
                   '--input', study, '--output', str(tmp_path / 'old')]) == 0
  err = [line for line in capsys.readouterr().err.splitlines() if 'deprecated' in line]
  assert err == [
      'mtl-jax predict: --checkpoint WORKDIR is deprecated and goes in the next release: use '
      '--workdir WORKDIR (--checkpoint takes best|latest)',
      'mtl-jax predict: --which latest is deprecated and goes in the next release: use '
      '--checkpoint latest']
  new, old = _report(tmp_path / 'new'), _report(tmp_path / 'old')
  assert new['checkpoint'] == old['checkpoint'] and new['checkpoint']['which'] == 'latest'
  assert new['classification'] == old['classification']


def test_predict_without_a_run_is_one_line(study, tmp_path, capsys):
  assert cli.main(['predict', '--input', study, '--output', str(tmp_path / 'o')]) == 2
  assert capsys.readouterr().err.strip() == (
      'mtl-jax predict: error: --workdir WORKDIR is required (the training run to use): this '
      'install ships no model; `make demo` trains a synthetic one, docs/training.md a real one')


def test_pseudo_label_takes_one_run(model_dir, tmp_path, capsys):
  assert cli.main(['pseudo-label', '--workdir', model_dir, '--workdir', model_dir,
                   '--dataset', 'synthetic_ct', '--data_dir', str(tmp_path)]) == 2
  assert '--workdir takes one run here, got 2' in capsys.readouterr().err


def test_estimate_is_the_sizing_verb_and_plan_its_old_name(capsys):
  with pytest.raises(SystemExit):
    cli.main(['estimate', '--help'])
  assert 'estimate a job\'s cost' in capsys.readouterr().out.lower()
  assert cli.main(['plan', '--config', 'configs/default.py:nope']) == 2
  err = capsys.readouterr().err.splitlines()
  assert err[0] == ('mtl-jax plan: the verb `plan` is deprecated and goes in the next '
                    'release: use `mtl-jax estimate`')
  assert err[1].startswith('mtl-jax plan: error: ') and len(err) == 2
