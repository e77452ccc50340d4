"""Issue 14: the ablation plan runs end to end, re-enters after a kill, and tables what exists."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO

SWEEP = [sys.executable, str(REPO / 'launch' / 'sweep.py'), '--plan',
         'configs/ablation.py:tiny']


def _sweep(root, data_dir, *extra, wait=True):
  cmd = SWEEP + ['--root', str(root), '--set', f'data.data_dir={data_dir}',
                 '--mtl_jax', f'{sys.executable} -m mtl_jax', *extra]
  if not wait:
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_plan_runs_reenters_after_a_kill_and_collects(tmp_path, synthetic_data_dir):
  root = tmp_path / 'ablation'
  first = root / 'full' / 'seed_0' / 'eval_validation.json'
  sweep = _sweep(root, synthetic_data_dir, wait=False)
  deadline = time.time() + 600
  while not first.exists() and sweep.poll() is None and time.time() < deadline:
    time.sleep(0.5)
  assert first.exists(), sweep.communicate()[0][-3000:]
  os.killpg(sweep.pid, signal.SIGKILL)  # the sweep and the run it is in
  sweep.wait()
  done_at = first.stat().st_mtime

  # A half-done sweep: --collect tables what exists and names what is missing.
  half = _sweep(root, synthetic_data_dir, '--collect')
  assert half.returncode == 0, half.stderr
  assert 'Missing:' in half.stdout and 'seg_only/seed_1' in half.stdout

  again = _sweep(root, synthetic_data_dir)
  assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
  assert 'full/seed_0: done, skipped' in again.stdout
  assert first.stat().st_mtime == done_at  # the finished run was not redone
  assert 'Missing' not in again.stdout

  table = (root / 'results.md').read_text()
  assert '| full | 2 |' in table and '| seg_only | 2 |' in table
  assert '| seg_only | Dice |' in table  # paired against the baseline, seed by seed
  with open(root / 'results.csv') as f:
    rows = list(csv.DictReader(f))
  assert sorted((r['arm'], r['seed']) for r in rows) == [
      ('full', '0'), ('full', '1'), ('seg_only', '0'), ('seg_only', '1')]
  assert all(float(r['dice']) >= 0 for r in rows)
  assert rows[0]['auc_covid'] != '' if rows[0]['arm'] == 'full' else True
  assert (root / 'results.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert json.loads((root / 'plan.json').read_text())['name'] == 'ablation:tiny'

  # Another plan's run under the same root: refused, naming the folder.
  stray = root / 'cls_only' / 'seed_0'
  stray.mkdir(parents=True)
  (stray / 'config.json').write_text('{}')
  mixed = _sweep(root, synthetic_data_dir, '--collect')
  assert mixed.returncode == 2
  assert 'cls_only/seed_0 (not an arm of ablation:tiny)' in mixed.stderr


def test_unknown_arms_and_seeds_are_one_line_errors(tmp_path):
  for flag, value, message in (('--arms', 'full,nope', 'valid arms of ablation:tiny: full, '
                                'seg_only'),
                               ('--seeds', '0,9', 'valid seeds of ablation:tiny: 0,1')):
    result = subprocess.run(SWEEP + ['--root', str(tmp_path), flag, value, '--dry_run'],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_dry_run_prints_a_slurm_array_and_a_tpu_loop(tmp_path):
  result = subprocess.run(SWEEP + ['--root', str(tmp_path), '--dry_run'], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert '#SBATCH --array=0-3' in result.stdout
  assert result.stdout.count('gcloud compute tpus tpu-vm ssh') == 4
  assert '--config.seed=1' in result.stdout
