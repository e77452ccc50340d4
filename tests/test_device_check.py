"""Issue 39.6: bench/device_check.sh (for a lent GPU) is well-formed, carries its
wheels, and its Python measures and tables on CPU at a tiny size."""

import json
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

SCRIPTS = ('bench/device_check.sh', 'bench/fetch_device_wheels.sh')


@pytest.mark.parametrize('script', SCRIPTS)
def test_scripts_parse_and_pass_shellcheck(script):
  assert subprocess.run(['bash', '-n', script], cwd=REPO).returncode == 0
  if shutil.which('shellcheck') is None:
    pytest.skip('no shellcheck here')
  result = subprocess.run(['shellcheck', script], cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0, result.stdout


def test_wheel_list_is_pinned_from_the_lock_and_leaves_out_what_the_device_has():
  result = subprocess.run(['bash', 'bench/fetch_device_wheels.sh', '--dry-run'], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  lock = {line.split(' ')[0].strip().lower()
          for line in (REPO / 'requirements.lock').read_text().splitlines()
          if '==' in line and not line.startswith('#')}
  pins = [line for line in result.stdout.splitlines() if '==' in line and ' ' not in line]
  assert pins and all(pin.lower() in lock for pin in pins), pins
  names = {pin.split('==')[0].lower().replace('_', '-') for pin in pins}
  assert {'ml-collections', 'grain', 'clu', 'nibabel', 'tensorflow-datasets'} <= names
  assert not names & {'jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'numpy', 'scipy'}
  assert 'pip download --no-deps --only-binary=:all: --python-version 3.12' in result.stdout


def test_table_is_one_markdown_table_with_the_estimate_beside_the_measurement():
  sys.path.insert(0, str(REPO / 'bench'))
  import device_check  # pylint: disable=g-import-not-at-top
  step = {'preset': 'full', 'dtype': 'float32', 'batch': 32, 'device': 'H100 (gpu)',
          'jax': '0.11.2', 'ms_per_step': 40.0, 'steps_per_s': 25.0, 'slices_per_s': 800.0,
          'peak_tflops': 495.0, 'peak_name': 'TF32', 'mfu': 0.17, 'mfu_plain_f32': 1.2,
          'device_peak_bytes': 9 * 2**30, 'estimate_ms_per_step': 16.6,
          'estimate_peak_bytes': 8 * 2**30, 'estimate_input_cores': 11.3}
  predict = {'volume': '512x512x300', 'device': 'gpu x1', 'batch': 32, 'end_to_end_s': 20.0,
             'read_write_s': 9.0, 'slices_per_s': 33.3, 'peak_rss_gib': 3.0,
             'device_peak_bytes': 2**30}
  lines = device_check.table([step, {**step, 'dtype': 'bfloat16', 'mfu_plain_f32': None}],
                             predict).splitlines()
  assert len(lines) == 5 and all(l.startswith('|') and l.endswith('|') for l in lines)
  assert len({l.count('|') for l in lines}) == 1  # every row has every column
  assert '2.41x' in lines[2] and '9.00 / 8.00' in lines[2] and 'plain f32' in lines[2]
  assert 'plain f32' not in lines[3] and 'predict 512x512x300' in lines[4]


@pytest.mark.slow
def test_step_measures_and_estimates_on_cpu_at_a_tiny_size(tmp_path):
  out = tmp_path / 'step.json'
  env = {'PATH': '/usr/bin:/bin', 'JAX_PLATFORMS': 'cpu'}
  result = subprocess.run([sys.executable, 'bench/device_check.py', 'step', '--preset', 'tiny',
                           '--dtype', 'float32', '--batch', '2', '--steps', '1',
                           '--peak_tflops', '1', '--json', str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
  assert result.returncode == 0, result.stderr[-2000:]
  figures = json.loads(out.read_text())
  assert figures['ms_per_step'] > 0 and figures['estimate_ms_per_step'] > 0
  assert 0 < figures['mfu'] < 1 and figures['peak_name'] == '--peak_tflops 1'
  table = subprocess.run([sys.executable, 'bench/device_check.py', 'table', str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
  assert table.returncode == 0 and 'train step, tiny float32' in table.stdout
