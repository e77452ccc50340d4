"""Mistakes a user can fix end in one line (exit 2); bugs keep their traceback (exit 1)."""

import os

import numpy as np
import pytest

from mtl_jax import checkpointing, cli, errors, predict, volume_io
from mtl_jax.config import loader
from mtl_jax.data import datasets, readers
from test_builders import _medseg_slices
from mtl_jax.tfds_builders import registry


def test_every_user_facing_error_is_a_user_error():
  for cls in (loader.ConfigError, readers.BadInputError, volume_io.InputNotFoundError,
              datasets.DatasetNotFoundError, checkpointing.CheckpointError,
              predict.NoModelError, errors.TrainingDivergedError, errors.DistributedError):
    assert issubclass(cls, errors.UserError), cls
  # ...and none of them is a built-in error class that a bug could raise too.
  for builtin in (ValueError, KeyError, RuntimeError, FileNotFoundError, OSError):
    assert not issubclass(errors.UserError, builtin)


def test_a_bug_shows_its_traceback_and_says_so(monkeypatch, capsys, tmp_path):
  def buggy(args, overrides):
    return {}['x']  # a KeyError from a bug, not from the user
  monkeypatch.setattr(cli, '_run', buggy)
  assert cli.main(['build-data', 'synthetic_ct', '--data_dir', str(tmp_path)]) == 1
  err = capsys.readouterr().err
  assert 'Traceback' in err and "KeyError: 'x'" in err
  assert 'this is a bug in mtl-jax' in err.splitlines()[-1]


def test_a_user_error_is_one_line_without_traceback(monkeypatch, capsys, tmp_path):
  def mistake(args, overrides):
    raise errors.ConfigError('train.global_batch_size=12 is not divisible by the 8 devices')
  monkeypatch.setattr(cli, '_run', mistake)
  assert cli.main(['build-data', 'synthetic_ct', '--data_dir', str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert err.strip() == ('mtl-jax build-data: error: train.global_batch_size=12 is not '
                         'divisible by the 8 devices')


def test_build_data_unknown_size_names_the_sizes(tmp_path, capsys):
  assert cli.main(['build-data', 'synthetic_ct', '--data_dir', str(tmp_path),
                   '--image_size', '32']) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1
  assert 'no stored size 32px; sizes: 64, 128, 256' in err and 'BuilderConfig' in err
  assert not os.listdir(tmp_path)


def test_unknown_dataset_names_the_known_ones(tmp_path, capsys):
  assert cli.main(['build-data', 'nope', '--data_dir', str(tmp_path)]) == 2
  assert 'known datasets: ' in capsys.readouterr().err


def test_failed_build_leaves_the_data_folder_as_it_was(tmp_path):
  root = tmp_path / 'medseg'
  _medseg_slices(root, n=4)
  (root / 'train' / 'images' / '0.jpg').write_bytes(b'not a jpeg at all')
  data_dir = tmp_path / 'data'
  (data_dir / 'keep').mkdir(parents=True)
  with pytest.raises(errors.BadInputError, match='1 bad files'):
    registry.build_dataset('medseg_covid', str(data_dir), 64, manual_dir=str(root))
  assert sorted(os.listdir(data_dir)) == ['keep']


def test_failed_build_keeps_what_was_built_before(tmp_path, monkeypatch):
  data_dir = str(tmp_path / 'data')
  registry.build_dataset('synthetic_ct', data_dir, 64, num_train=8, num_validation=4,
                         num_test=4)
  before = sorted(registry._snapshot(data_dir, 'synthetic_ct'))

  def fail(self, **kwargs):
    os.makedirs(os.path.join(data_dir, 'synthetic_ct', '128', '.config'))
    raise errors.BadInputError('broken source')
  monkeypatch.setattr(registry.tfds.core.DatasetBuilder, 'download_and_prepare', fail)
  with pytest.raises(errors.BadInputError, match='broken source'):
    registry.build_dataset('synthetic_ct', data_dir, 128)
  assert sorted(registry._snapshot(data_dir, 'synthetic_ct')) == before
  assert datasets.load_split('synthetic_ct', 'train', data_dir, 64)[0]['image'].shape == (64, 64)


def test_training_without_its_dataset_creates_nothing(tmp_path, capsys):
  workdir = tmp_path / 'run'
  code = cli.main(['train', '--config', 'configs/default.py:tiny', '--workdir',
                   str(workdir), f'--config.data.data_dir={tmp_path / "nodata"}'])
  assert code == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and 'mtl-jax build-data synthetic_ct' in err
  assert not workdir.exists()


def test_bad_best_metric_is_a_config_error():
  results = {'dice': 0.5}
  with pytest.raises(errors.ConfigError, match="no 'auc'"):
    checkpointing.selection_value(results, 'auc')
  assert checkpointing.selection_value({'dice': np.nan}, 'dice') is None


def test_bad_window_and_stray_overrides_are_one_line(tmp_path, capsys):
  assert cli.main(['build-data', 'synthetic_ct', '--data_dir', str(tmp_path),
                   '--window_hu', '400', '-1000']) == 2
  assert 'LOW must be below HIGH' in capsys.readouterr().err
  assert cli.main(['predict', '--workdir', str(tmp_path), '--input', str(tmp_path),
                   '--output', str(tmp_path / 'o'), '--config.eval.batch_size=4']) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and 'takes no --config.KEY=VALUE' in err
  assert not os.listdir(tmp_path)


def test_a_workdir_in_use_is_refused(tmp_path, capsys):
  from mtl_jax import train  # pylint: disable=g-import-not-at-top
  held = train._lock_workdir(str(tmp_path))
  try:
    with pytest.raises(errors.UserError, match='in use by another mtl-jax train'):
      train._lock_workdir(str(tmp_path))
  finally:
    held.close()
  train._lock_workdir(str(tmp_path)).close()  # free again


def test_sweep_moves_an_incomplete_step_aside_and_deletes_only_temporaries(tmp_path):
  (tmp_path / '7' / 'state').mkdir(parents=True)  # no meta, no _METADATA
  (tmp_path / '8.orbax-checkpoint-tmp-123').mkdir()
  (tmp_path / '.discard-5').mkdir()
  lines = checkpointing.sweep(str(tmp_path))
  assert len(lines) == 3
  names = os.listdir(tmp_path)
  assert len(names) == 1 and names[0].startswith('.incomplete-7-')
  assert checkpointing.finished_steps(str(tmp_path)) == []
