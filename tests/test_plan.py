"""Issue 16: `mtl-jax plan` compiles a config's real steps for its device count and sizes them."""

import json
import subprocess
import sys

import pytest

from conftest import REPO

PLAN = [sys.executable, '-m', 'mtl_jax', 'estimate']


def _plan(*args, timeout=600):
  return subprocess.run(PLAN + list(args), cwd=REPO, capture_output=True, text=True,
                        timeout=timeout, env={'PATH': '/usr/bin:/bin', 'JAX_PLATFORMS': 'cpu'})


@pytest.mark.slow
@pytest.mark.parametrize('config, devices', [('configs/gpu8.py', 8), ('configs/tpu.py', 32)])
def test_target_configs_compile_for_their_device_count(config, devices, tmp_path):
  out = tmp_path / 'plan.json'
  result = _plan('--config', config, '--json', str(out))
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  figures = json.loads(out.read_text())
  assert figures['devices'] == devices
  assert figures['per_device_batch'] * devices == figures['global_batch']
  train = figures['train']
  # Every device holds the parameters and AdamW's two moments; the gradient
  # all-reduce moves at least the parameters' bytes.
  assert figures['optimizer_bytes'] == pytest.approx(2 * figures['params_bytes'], rel=0.01)
  assert train['argument_bytes'] >= figures['params_bytes'] + figures['optimizer_bytes']
  assert train['all_reduce_bytes'] >= figures['params_bytes']
  assert train['temp_bytes'] > 0 and train['flops'] > 0
  # FLOPs: a training step costs about 3 forward passes (fwd + 2 x bwd).
  forward_per_example = figures['eval']['flops'] * devices / figures['eval_batch']
  assert 2 < figures['flops_per_example'] / forward_per_example < 4.5
  assert figures['step_seconds'] > 0 and 'examples/s' in result.stdout


def test_bad_requests_are_one_line_errors():
  for args, message in (
      (['--config', 'configs/gpu8.py', '--devices', '7'], 'not divisible by the 7 devices'),
      (['--config', 'configs/gpu8.py', '--peak_tflops', '0'], '--peak_tflops 0'),
      (['--config', 'configs/nope.py'], 'not found'),
      (['--config', 'configs/default.py:tiny', '--devices', '2', '--peak_tflops', '1',
        '--device_memory_gb', '0.0001'], 'more than --device_memory_gb 0.0001')):
    result = _plan(*args)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, \
        result.stderr
