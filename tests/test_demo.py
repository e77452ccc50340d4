"""`mtl-jax demo` (what `make demo` runs), on the tiny preset: build, train, evaluate, table."""

import os

import pytest

from mtl_jax import cli


@pytest.mark.slow
def test_demo_end_to_end_prints_the_results_table(synthetic_data_dir, tmp_path, capsys):
  workdir = tmp_path / 'demo'
  code = cli.main(['demo', '--workdir', str(workdir), '--config', 'configs/default.py:tiny',
                   f'--config.data.data_dir={synthetic_data_dir}',
                   '--config.train.num_train_steps=2'])
  captured = capsys.readouterr()
  assert code == 0, captured.err[-2000:]
  assert '| metric | validation | test |' in captured.out
  assert '| Dice (pooled) |' in captured.out
  assert '[process=' not in captured.err  # library chatter stays in the log file
  assert os.path.exists(workdir / 'eval_test.json')
  assert os.path.exists(workdir / 'mtl-jax.log')
