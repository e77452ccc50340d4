"""A report that cannot mislead, and batch/output behaviour (issue 40 items 3 and 5).

Each test pins one contradiction the issue found in `mtl-jax predict`'s
report: lesion outside the lungs counted as if it were lesion, involvement
rounded to 0.0% beside CT-1, a near-uniform class given as an answer, an
`ood` block mixing two rules, a flagged study reported as usual, no model
card; and in batch mode one bad row losing the whole batch.
"""

import json
import os

import nibabel as nib
import numpy as np
import pytest

from mtl_jax import cli, model_card, predict, report
from test_predict import fake_threshold_model, synthetic_volume


def _save_ct(tmp_path, name='ct.nii.gz', seed=3):
  vol, _ = synthetic_volume(size=64, n=4, seed=seed)
  path = tmp_path / name
  nib.save(nib.Nifti1Image(vol, np.diag([5.6, 5.6, 5.0, 1.0])), str(path))
  return path


def _fake(predictor, seg, probs=None):
  """predict_batch with a given seg (function of the images) and class probabilities."""
  def predict_batch(images):
    n = len(predictor.class_names)
    p = np.full((len(images), n), 1.0 / n) if probs is None else np.tile(probs, (len(images), 1))
    return {'seg': seg(images).astype(np.float32), 'cls_probs': p.astype(np.float32),
            'recon_mse': np.zeros(len(images), np.float32)}
  return predict_batch


def _rep(**over):
  """A minimal report for summary_line."""
  rep = {'status': 'ok',
         'classification': {'predicted_class': 'covid19', 'result': 'covid19',
                            'probabilities': {'covid19': 0.9, 'normal': 0.05, 'other': 0.05},
                            'inconclusive': False},
         'lesion': {'volume_ml': 3.71, 'in_lung_ml': 0.31, 'outside_lung_ml': 3.40},
         'severity': {'involvement_percent': 0.013, 'grade': 'CT-1'},
         'ood': {'rule': 'encoder features', 'flagged': False, 'value': 1.0, 'threshold': 2.0}}
  rep.update(over)
  return rep


def test_lesion_outside_lung_reported_apart_with_warning(predictor, monkeypatch, tmp_path):
  """A 'lesion' in the air in front of the body (a corner of every slice, far
  from the lungs) plus a little lung: most of it lies outside the lung mask.
  It is reported apart, the involvement counts only in-lung voxels, the
  summary line does not present the total as lesion, and a warning says most
  of the prediction is outside the lungs."""
  def seg(images):
    out = np.zeros(images.shape, bool)
    out[:, :20, :20] = True
    out[:, 28:31, 14:17] = True  # a few pixels inside the right lung
    return out
  monkeypatch.setattr(predictor, 'predict_batch', _fake(predictor, seg))
  path = _save_ct(tmp_path)
  rep = predict.run(None, path, tmp_path / 'out', predictor=predictor)[0]
  les = rep['lesion']
  assert les['outside_lung_ml'] > 0.5 * les['volume_ml']
  assert les['in_lung_ml'] == pytest.approx(les['volume_ml'] - les['outside_lung_ml'])
  lung_ml = rep['lungs']['volume_ml']['total']
  assert rep['severity']['involvement_percent'] == pytest.approx(
      100 * les['in_lung_ml'] / lung_ml, rel=0.05, abs=1e-3)
  assert any('outside the lungs' in w for w in rep['warnings']), rep['warnings']
  line = report.summary_line('ct', rep)
  assert f'lesion {les["volume_ml"]:.1f} mL,' not in line
  assert 'outside the lungs' in line


def test_involvement_never_prints_zero_when_not_zero():
  """0.013% involvement (graded CT-1) printed as '0.0%' reads as CT-0."""
  line = report.summary_line('s', _rep())
  assert '0.0%' not in line and '0.013%' in line and 'CT-1' in line
  assert report.format_percent(0.0) == '0%'
  assert report.format_percent(0.04) != '0.0%' and float(report.format_percent(0.04)[:-1]) > 0
  assert report.format_percent(24.96) != '25.0%'  # CT-1 must not print as 25%
  assert report.format_percent(12.34) == '12.3%'


def test_near_uniform_class_is_inconclusive(predictor, monkeypatch, tmp_path):
  """Probabilities 0.33/0.35/0.31 are no answer: 'inconclusive' with them beside it."""
  monkeypatch.setattr(predictor, 'predict_batch',
                      _fake(predictor, lambda im: im > 2.0, [0.35, 0.33, 0.32]))
  rep = predict.run(None, _save_ct(tmp_path), tmp_path / 'out', predictor=predictor)[0]
  c = rep['classification']
  assert c['inconclusive'] and c['result'] == 'inconclusive'
  assert c['confidence_threshold']['value'] > 0.35 and c['confidence_threshold']['rule']
  line = report.summary_line('ct', rep)
  assert 'inconclusive' in line and '0.35' in line and '0.33' in line
  # The 2-step model's threshold comes from its validation slices (where it
  # never reaches the target accuracy: every study is inconclusive). Under
  # the documented fallback (chance + margin), a confident answer stays one.
  assert predictor.confidence['source'] == 'validation'
  monkeypatch.setattr(predictor, 'confidence', model_card.fallback(3))
  monkeypatch.setattr(predictor, 'predict_batch',
                      _fake(predictor, lambda im: im > 2.0, [0.96, 0.02, 0.02]))
  rep = predict.run(None, _save_ct(tmp_path), tmp_path / 'out2', predictor=predictor)[0]
  assert not rep['classification']['inconclusive']
  assert rep['classification']['result'] == rep['classification']['predicted_class']


def test_ood_block_is_one_rule(predictor, tmp_path):
  """The figures beside `flagged` are the ones that decided it; the
  reconstruction error is in its own named field."""
  rep = predict.run(None, _save_ct(tmp_path), tmp_path / 'out', predictor=predictor)[0]
  ood = rep['ood']
  assert ood['rule'] == 'encoder features'
  assert ood['flagged'] == (ood['value'] > ood['threshold'])
  assert ood['value'] == ood['feature_distance']
  assert 'percentile' not in ood and 'threshold_percentile' not in ood
  rec = ood['reconstruction_error']
  assert rec['rule'] == 'reconstruction error' and 'decides' in rec['note']
  assert 0 <= rec['percentile'] <= 100


def test_flagged_study_is_not_reported_as_usual(model_dir, predictor, monkeypatch, tmp_path, capsys):
  """A flagged study: status out_of_distribution, a summary line saying the
  figures are not reliable; --refuse_ood makes it an error (2, nothing written)."""
  meta = dict(predictor.meta)
  meta['ood_features'] = dict(meta['ood_features'], threshold=-1.0)  # everything flagged
  monkeypatch.setattr(predictor, 'meta', meta)
  monkeypatch.setattr(predict, 'Predictor', lambda *a, **k: predictor)
  path = _save_ct(tmp_path)
  rep = predict.run(None, path, tmp_path / 'out', predictor=predictor)[0]
  assert rep['status'] == 'out_of_distribution'
  assert 'not reliable' in report.summary_line('ct', rep)
  capsys.readouterr()
  code = cli.main(['predict', '--workdir', model_dir, '--input', str(path),
                   '--output', str(tmp_path / 'refused'), '--refuse_ood'])
  err = capsys.readouterr().err
  assert code == 2 and not (tmp_path / 'refused').exists()
  assert err.strip().splitlines()[-1].startswith('mtl-jax predict: error: ')
  assert 'out of distribution' in err


def test_report_carries_model_card(predictor, tmp_path):
  rep = predict.run(None, _save_ct(tmp_path), tmp_path / 'out', predictor=predictor)[0]
  card = rep['model']
  assert 'research use only' in card['intended_use'].lower()
  assert card['training_data']['sources']
  assert card['recipe']['steps'] == 2
  assert card['validation'] is not None and card['validation'] != 'not recorded'
  assert card['validation']['selection']['best_metric']


def _bad_nifti(path):
  path.write_bytes(b'not a nifti at all' * 30)


def test_batch_skip_bad(model_dir, predictor, monkeypatch, tmp_path, capsys):
  """Without --skip_bad one bad row is an error and nothing is written; with
  it, the rest are written, the bad one listed with its error, exit 3."""
  monkeypatch.setattr(predict, 'Predictor', lambda *a, **k: predictor)
  monkeypatch.setattr(predictor, 'predict_batch', fake_threshold_model(predictor, -500))
  (tmp_path / 'in').mkdir()
  _save_ct(tmp_path / 'in', 'a.nii.gz')
  _bad_nifti(tmp_path / 'in' / 'b.nii')
  _save_ct(tmp_path / 'in', 'c.nii.gz', seed=4)
  csv = tmp_path / 'in' / 'list.csv'
  csv.write_text('input\na.nii.gz\nb.nii\nc.nii.gz\n')
  argv = ['predict', '--workdir', model_dir, '--input', str(csv)]
  assert cli.main(argv + ['--output', str(tmp_path / 'o1')]) == 2
  assert not (tmp_path / 'o1').exists()
  capsys.readouterr()
  assert cli.main(argv + ['--output', str(tmp_path / 'o2'), '--skip_bad']) == 3
  err = capsys.readouterr().err
  assert 'b.nii' in err
  summary = json.loads((tmp_path / 'o2' / 'batch_summary.json').read_text())
  assert [s['name'] for s in summary['studies']] == ['a', 'c']
  assert [f['name'] for f in summary['failed']] == ['b']
  assert 'b.nii' in summary['failed'][0]['error'] and '\n' not in summary['failed'][0]['error']
  assert sorted(os.listdir(tmp_path / 'o2')) == ['a', 'batch_summary.json', 'c']


def test_step_folder_as_workdir(model_dir, predictor, monkeypatch, tmp_path, capsys):
  """`--workdir runs/x/best/2` (a step folder): a one-line answer naming the
  run folder to give, never 'no checkpoint found'."""
  best = os.path.join(model_dir, 'best')
  step = sorted(os.listdir(best))[-1]
  code = cli.main(['predict', '--workdir', os.path.join(best, step), '--input',
                   str(_save_ct(tmp_path)), '--output', str(tmp_path / 'out')])
  err = capsys.readouterr().err.strip().splitlines()
  if code == 0:
    assert (tmp_path / 'out' / 'report.json').exists()
  else:
    assert code == 2 and len(err) == 1 and 'no checkpoint found' not in err[0]
    assert f'--workdir {os.path.normpath(model_dir)}' in err[0]


def test_confidence_calibration_rule():
  """The threshold is the lowest top probability above which validation
  slices reach the target accuracy; never under chance + margin."""
  rng = np.random.default_rng(0)
  n = 400
  top = rng.uniform(0.34, 1.0, n)
  labels = rng.integers(0, 3, n)
  probs = np.zeros((n, 3))
  right = rng.uniform(size=n) < (top - 0.2)  # confident slices are more often right
  predicted = np.where(right, labels, (labels + 1) % 3)
  probs[np.arange(n), predicted] = top
  for k in range(3):
    probs[:, k] = np.where(probs[:, k] == 0, (1 - top) / 2, probs[:, k])
  got = model_card.calibrate(probs, labels, 3)
  assert got['reached'] and model_card.fallback(3)['value'] <= got['value'] < 1
  above = probs.max(1) >= got['value']
  assert np.mean(probs[above].argmax(1) == labels[above]) >= model_card.TARGET_ACCURACY
  assert model_card.calibrate(probs, (probs.argmax(1) + 1) % 3, 3)['value'] == 1.0  # never right
  meta = {'class_confidence': got}
  assert model_card.confidence_threshold(meta, 3)['source'] == 'validation'
  assert model_card.confidence_threshold({}, 3)['source'] == 'fallback'


def test_flat_and_grey_images_get_no_plain_class(predictor, tmp_path):
  """A flat PNG and a grey photo came back 'covid19 p=0.36': now no plain answer."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from test_predict import photo_like  # pylint: disable=g-import-not-at-top
  Image.fromarray(np.full((64, 64), 128, np.uint8)).save(tmp_path / 'flat.png')
  Image.fromarray(photo_like()).save(tmp_path / 'photo.png')
  for name in ('flat.png', 'photo.png'):
    rep = predict.run(None, tmp_path / name, tmp_path / f'out_{name}', predictor=predictor)[0]
    line = report.summary_line(name, rep)
    assert 'inconclusive' in line or 'not reliable' in line, line
    assert 'research use only' in rep['model']['intended_use']


def test_progress_bar_only_on_a_terminal(monkeypatch):
  import sys  # pylint: disable=g-import-not-at-top
  items = [1, 2, 3]
  monkeypatch.setattr(sys.stderr, 'isatty', lambda: False, raising=False)
  assert predict._progress(items, desc='x') is items  # pylint: disable=protected-access
  monkeypatch.setattr(sys.stderr, 'isatty', lambda: True, raising=False)
  bar = predict._progress(items, desc='x')  # pylint: disable=protected-access
  assert bar is not items and list(bar) == items
