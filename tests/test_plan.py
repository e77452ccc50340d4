"""Issue 16: `mtl-jax plan` compiles a config's real steps for its device count and sizes them."""

import json
import re
import subprocess
import sys

import pytest

from conftest import REPO

PLAN = [sys.executable, '-m', 'mtl_jax', 'estimate']


def _plan(*args, timeout=600):
  return subprocess.run(PLAN + list(args), cwd=REPO, capture_output=True, text=True,
                        timeout=timeout, env={'PATH': '/usr/bin:/bin', 'JAX_PLATFORMS': 'cpu'})


@pytest.mark.slow
@pytest.mark.parametrize('config, devices, flags', [
    ('configs/gpu8.py', 8, ()), ('configs/tpu.py', 32, ()),
    ('configs/real.py:gpu', 1, ()),
    # an arm of configs/ablation.py:gpu on a node of 8 GPUs, and one of :tpu
    ('configs/real.py:gpu,seg_only', 8, ('--devices', '8')),
    ('configs/real.py:tpu,no_recon', 32, ())])
def test_target_configs_compile_for_their_device_count(config, devices, flags, tmp_path):
  out = tmp_path / 'plan.json'
  result = _plan('--config', config, '--json', str(out), *flags)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  figures = json.loads(out.read_text())
  assert figures['devices'] == devices
  assert figures['per_device_batch'] * devices == figures['global_batch']
  train = figures['train']
  # Every device holds the parameters and AdamW's two moments; the gradient
  # all-reduce moves at least the parameters' bytes.
  assert figures['optimizer_bytes'] == pytest.approx(2 * figures['params_bytes'], rel=0.01)
  assert train['argument_bytes'] >= figures['params_bytes'] + figures['optimizer_bytes']
  if devices > 1:  # one device reduces nothing
    assert train['all_reduce_bytes'] >= figures['params_bytes']
  assert train['temp_bytes'] > 0 and train['flops'] > 0
  # FLOPs: a training step costs about 3 forward passes (fwd + 2 x bwd).
  forward_per_example = figures['eval']['flops'] * devices / figures['eval_batch']
  assert 2 < figures['flops_per_example'] / forward_per_example < 4.5
  assert figures['step_seconds'] > 0 and 'examples/s' in result.stdout
  assert 'memory figures: compiled on' in result.stdout and 'estimates' in result.stdout
  assert figures['input_cores'] > 0 and 'input pipeline: ~' in result.stdout


def test_bad_requests_are_one_line_errors():
  for args, message in (
      (['--config', 'configs/gpu8.py', '--devices', '7'], 'not divisible by the 7 devices'),
      (['--config', 'configs/gpu8.py', '--peak_tflops', '0'], '--peak_tflops 0'),
      (['--config', 'configs/nope.py'], 'not found'),
      (['--config', 'configs/real.py:cpu', '--devices', '32'],
       'train.global_batch_size=16 is not divisible by the 32 devices; use a multiple of 32, '
       'e.g. 32 (--config.train.global_batch_size=32)'),
      (['--config', 'configs/gpu8.py', '--devices', '48'], 'e.g. 96 or 144'),
      (['--config', 'configs/ablation.py'], 'is a plan (launch/sweep.py --plan '
       'configs/ablation.py), not a run\'s config: give one of its arms\' configs, e.g. '
       '--config configs/real.py:cpu'),
      (['--config', 'configs/ablation.py:tpu'], '--config configs/real.py:tpu'),
      (['--config', 'configs/default.py:tiny', '--devices', '2', '--peak_tflops', '1',
        '--device_memory_gb', '0.0001'], 'more than --device_memory_gb 0.0001')):
    result = _plan(*args)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, \
        result.stderr


def test_output_names_its_memory_source_and_the_host_cores_it_needs(tmp_path):
  out = tmp_path / 'plan.json'
  result = _plan('--config', 'configs/default.py:tiny', '--devices', '2', '--peak_tflops',
                 '1000', '--json', str(out))
  assert result.returncode == 0, result.stderr[-2000:]
  figures = json.loads(out.read_text())
  lines = result.stdout.splitlines()
  assert any(l.startswith('memory figures: compiled on 2 cpu') and 'estimates' in l
             for l in lines), result.stdout
  pipeline = [l for l in lines if l.startswith('input pipeline: ~')]
  assert pipeline and 'measured 170 slices/s per core at 256 px' in pipeline[0]
  assert 'bench/RESULTS.md#input-pipeline' in pipeline[0]
  # The tiny model at 1000 TFLOP/s: far more slices/s than 16 cores augment.
  assert figures['input_cores'] > figures['host_cores_typical'] == 16
  assert any(l.startswith('warning: the input pipeline needs') for l in lines)


def test_input_cores_scale_with_the_measured_rate_and_pixels():
  from mtl_jax import sizing  # pylint: disable=g-import-not-at-top
  assert sizing.input_cores(170.0, 256) == pytest.approx(1.0)
  assert sizing.input_cores(170.0 * 4, 128) == pytest.approx(1.0)  # a quarter of the pixels
  assert sizing.input_cores(9496.0, 256) == pytest.approx(9496 / 170)


def test_the_measured_rate_is_the_one_bench_results_records():
  from mtl_jax import sizing  # pylint: disable=g-import-not-at-top
  text = (REPO / 'bench' / 'RESULTS.md').read_text()
  section = text.split('## Input pipeline (`bench/input_pipeline.py`)', 1)[1].split('\n## ')[0]
  assert f'--image_size {sizing.AUGMENTED_AT_SIZE}' in section
  rates = [int(r) for r in re.findall(r'^\| augmentation, \d worker processes \| (\d+) \|',
                                      section, re.M)]
  assert rates and all(abs(r / 2 - sizing.AUGMENTED_SLICES_PER_CORE) < 20 for r in rates)


def test_training_a_plan_file_is_a_one_line_error(tmp_path):
  result = subprocess.run([sys.executable, '-m', 'mtl_jax', 'train', '--config',
                           'configs/ablation.py:gpu', '--workdir', str(tmp_path / 'run')],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={'PATH': '/usr/bin:/bin', 'JAX_PLATFORMS': 'cpu'})
  assert result.returncode == 2
  assert 'is a plan (launch/sweep.py --plan configs/ablation.py:gpu)' in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr
