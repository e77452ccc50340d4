"""launch/tpu_vm.sh, run for real against a fake gcloud (tests/fake_gcloud/gcloud).

The fake runs each `ssh --command` here, in a scratch HOME per worker with a
clean environment, so everything but the TPU is the real thing: clone from a
git URL, Python 3.12, install from a lock (`--accel cpu`: requirements.lock,
the CPU stand-in for requirements-tpu.lock), build data, train, evaluate.
This machine has python3.12, so the worker's uv fallback is not exercised
(uv fetches Python from the network, which is not reachable here).
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / 'launch' / 'tpu_vm.sh'
FAKE = REPO / 'tests' / 'fake_gcloud'


def _git(*args, cwd):
  return subprocess.run(['git', *args], cwd=cwd, check=True, capture_output=True,
                        text=True).stdout.strip()


@pytest.fixture(scope='module')
def repo_url(tmp_path_factory):
  """This working tree as it is (committed or not) in a git repo: (url, commit)."""
  src = tmp_path_factory.mktemp('src')
  files = _git('ls-files', '-co', '--exclude-standard', '-z', cwd=REPO).split('\0')
  for name in filter(None, files):
    if (REPO / name).is_file():
      (src / name).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(REPO / name, src / name)
  _git('init', '-q', cwd=src)
  _git('add', '-A', cwd=src)
  _git('-c', 'user.name=test', '-c', 'user.email=test@localhost', 'commit', '-q', '-m',
       'snapshot', cwd=src)
  return f'file://{src}', _git('rev-parse', 'HEAD', cwd=src)


def _run(args, tmp_path, timeout=60, script=SCRIPT, workers=1):
  state = tmp_path / 'gcloud'
  python_dir = os.path.dirname(os.path.realpath(getattr(sys, '_base_executable',
                                                        sys.executable)))
  env = {k: v for k, v in os.environ.items()
         if k not in ('JAX_PLATFORMS', 'XLA_FLAGS', 'VIRTUAL_ENV', 'PYTHONPATH')}
  env.update(PATH=f'{FAKE}:{env["PATH"]}', FAKE_GCLOUD_STATE=str(state),
             FAKE_TPU_WORKERS=str(workers), FAKE_TPU_PATH=f'{python_dir}:/usr/bin:/bin')
  result = subprocess.run(['bash', str(script), '--name', 'mtl-test', '--zone', 'zone-a',
                           '--type', 'v4-8', *args], capture_output=True, text=True,
                          env=env, timeout=timeout, check=False)
  log = state / 'calls.log'
  calls = [line.split('\t') for line in log.read_text().splitlines()] if log.exists() else []
  return result, calls


def _actions(calls):
  return [f'{c[0]} {c[2]}'.strip() for c in calls]


@pytest.mark.slow
def test_create_install_build_train_evaluate_and_keep_the_vm(repo_url, tmp_path):
  url, commit = repo_url
  shared = tmp_path / 'bucket'  # what every worker sees (gs:// on a real VM)
  result, calls = _run(
      ['--repo_url', url, '--ref', commit, '--accel', 'cpu',
       '--workdir', str(shared / 'runs' / 'tiny'), '--data_dir', str(shared / 'data'),
       '--config', 'configs/default.py:tiny', '--build_data', 'synthetic_ct --image_size 64',
       '--', '--config.train.num_train_steps=2', '--config.train.eval_every_steps=2'],
      tmp_path, timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert _actions(calls) == ['tpu-vm describe', 'tpu-vm create', 'tpu-vm ssh all',
                             'tpu-vm ssh 0', 'tpu-vm ssh all', 'tpu-vm ssh all']
  assert 'git clone -q ' + url in calls[2][3] and 'requirements.lock' in calls[2][3]
  assert 'build-data synthetic_ct --image_size 64 --data_dir' in calls[3][3]
  assert 'mtl-jax train' in calls[4][3] and 'mtl-jax evaluate' in calls[5][3]
  assert 'Python 3.12' in result.stdout
  assert 'kept the TPU VM mtl-test' in result.stderr + result.stdout
  worker = tmp_path / 'gcloud' / 'vms' / 'mtl-test' / 'worker-0' / 'mtl-jax'
  assert _git('rev-parse', 'HEAD', cwd=worker) == commit
  evaluation = json.loads((shared / 'runs' / 'tiny' / 'eval_test.json').read_text())
  assert evaluation['num_examples'] > 0 and 0 <= evaluation['dice'] <= 1
  assert (worker / 'train.log').exists() and (worker / 'evaluate.log').exists()


def test_delete_happens_even_when_a_step_fails(tmp_path):
  result, calls = _run(['--repo_url', f'file://{tmp_path}/no-such-repo', '--ref', 'main',
                        '--workdir', 'gs://b/r', '--data_dir', 'gs://b/d', '--delete'],
                       tmp_path)
  assert result.returncode != 0
  assert _actions(calls) == ['tpu-vm describe', 'tpu-vm create', 'tpu-vm ssh all',
                             'tpu-vm delete']


def test_a_kept_vm_is_reused(tmp_path):
  state = tmp_path / 'gcloud'
  subprocess.run([str(FAKE / 'gcloud'), 'compute', 'tpus', 'tpu-vm', 'create', 'mtl-test',
                  '--zone', 'zone-a'], env=dict(os.environ, FAKE_GCLOUD_STATE=str(state)),
                 check=True, capture_output=True)
  result, calls = _run(['--repo_url', f'file://{tmp_path}/no-such-repo', '--ref', 'main',
                        '--workdir', 'gs://b/r', '--data_dir', 'gs://b/d', '--delete'],
                       tmp_path)
  assert 'reusing the TPU VM mtl-test' in result.stdout
  assert _actions(calls)[1:] == ['tpu-vm describe', 'tpu-vm ssh all', 'tpu-vm delete']


def test_no_delete_without_the_flag_even_after_a_failure(tmp_path):
  result, calls = _run(['--repo_url', f'file://{tmp_path}/no-such-repo', '--ref', 'main',
                        '--workdir', 'gs://b/r', '--data_dir', 'gs://b/d'], tmp_path)
  assert result.returncode != 0
  assert 'tpu-vm delete' not in _actions(calls)
  assert 'kept the TPU VM mtl-test' in result.stdout


def test_a_local_origin_needs_repo_url(repo_url, tmp_path):
  src = pathlib.Path(repo_url[0].removeprefix('file://'))
  clone = tmp_path / 'clone'
  _git('clone', '-q', str(src), str(clone), cwd=tmp_path)  # origin: a local path
  result, calls = _run(['--workdir', 'gs://b/r', '--data_dir', 'gs://b/d'], tmp_path,
                       script=clone / 'launch' / 'tpu_vm.sh')
  assert result.returncode == 2 and not calls
  assert '--repo_url is required' in result.stderr and str(src) in result.stderr


def test_required_flags_and_the_dry_run(tmp_path):
  result, calls = _run(['--data_dir', 'gs://b/d'], tmp_path)
  assert result.returncode == 2 and '--workdir is required' in result.stderr and not calls
  result, calls = _run(['--workdir', 'gs://b/r'], tmp_path)
  assert result.returncode == 2 and '--data_dir is required' in result.stderr
  result, calls = _run(['--workdir', 'gs://b/r w', '--data_dir', 'gs://b/d', '--dry_run',
                        '--repo_url', 'https://git.example/mtl-jax.git', '--ref', 'v1',
                        '--', '--config.seed=1'], tmp_path)
  assert result.returncode == 0 and not calls, result.stderr
  lines = result.stdout.splitlines()
  assert lines[0].startswith('+ gcloud compute tpus tpu-vm create mtl-test --zone zone-a')
  assert 'pip install -q -r requirements-tpu.lock' in lines[1]
  assert "--workdir gs://b/r\\ w --config.data.data_dir=gs://b/d --config.seed=1" in lines[2]
  assert 'mtl-jax evaluate --workdir gs://b/r\\ w --split test' in lines[3]
  assert not any('delete' in line for line in lines[:-1])


def test_scripts_pass_shellcheck():
  if not shutil.which('shellcheck'):
    pytest.skip('shellcheck is not installed (apt-get install shellcheck)')
  result = subprocess.run(['shellcheck', str(SCRIPT), str(FAKE / 'gcloud')],
                          capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stdout
