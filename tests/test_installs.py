"""The pinned installs: one lock per backend, `make setup ACCEL=...`, a missing backend.

requirements.lock is the CPU set (CI installs it for real). The accelerator
locks are derived from it by `make lock-accel`; that they resolve against the
package index is checked here without downloading a CUDA wheel (`network`).
"""

import os
import pathlib
import re
import subprocess
import sys

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from mtl_jax import backends, cli
from mtl_jax.config import loader

REPO = pathlib.Path(__file__).resolve().parents[1]
ACCELS = ('cuda12', 'cuda13', 'tpu')
# The platform the locks are for: GPU nodes and TPU VMs, Python 3.12, glibc >= 2.35.
TARGET = {'python_version': '3.12', 'python_full_version': '3.12.0', 'sys_platform': 'linux',
          'platform_system': 'Linux', 'platform_machine': 'x86_64', 'os_name': 'posix',
          'implementation_name': 'cpython', 'platform_python_implementation': 'CPython'}
PLATFORMS = [f'manylinux_2_{v}_x86_64' for v in range(17, 36)] + ['manylinux2014_x86_64']


def read_lock(name) -> dict[str, str]:
  pins = {}
  for line in (REPO / name).read_text().splitlines():
    if line.strip() and not line.startswith('#'):
      package, version = line.split('==')
      pins[canonicalize_name(package)] = version
  return pins


def lock_name(accel):
  return 'requirements.lock' if accel == 'cpu' else f'requirements-{accel}.lock'


@pytest.mark.parametrize('accel', ACCELS)
def test_accelerator_lock_is_the_cpu_lock_plus_its_backend(accel):
  cpu, lock = read_lock('requirements.lock'), read_lock(lock_name(accel))
  assert {p: lock.get(p) for p in cpu} == cpu  # the same pins for every shared package
  added = set(lock) - set(cpu)
  plugin = {'cuda12': 'jax-cuda12-plugin', 'cuda13': 'jax-cuda13-plugin', 'tpu': 'libtpu'}[accel]
  assert plugin in added
  if accel != 'tpu':  # the plugin is built with jaxlib: same version
    assert lock[plugin] == lock['jaxlib'] == lock[f'jax-{accel}-pjrt']
  assert {'jax-cuda12-plugin', 'jax-cuda13-plugin', 'libtpu'} & added == {plugin}


def test_every_accel_has_a_pyproject_extra_and_a_make_target():
  import tomllib  # pylint: disable=g-import-not-at-top
  extras = tomllib.loads((REPO / 'pyproject.toml').read_text())['project'][
      'optional-dependencies']
  for accel in ACCELS:
    assert extras[accel] == [f'jax[{accel}]']
  makefile = (REPO / 'Makefile').read_text()
  assert re.search(r'^ACCELS := cpu ' + ' '.join(ACCELS) + '$', makefile, re.M)


def test_the_venv_holds_exactly_its_lock():
  """`pip install -r LOCK` pulls in nothing the lock leaves out (a lock is closed)."""
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  accel_file = pathlib.Path(sys.prefix) / '.accel'
  if not accel_file.exists():
    pytest.skip(f'{sys.prefix} was not made by `make setup`')
  lock = read_lock(lock_name(accel_file.read_text().strip()))
  installed = {canonicalize_name(d.metadata['Name']): d.version for d in metadata.distributions()}
  installed = {p: v for p, v in installed.items() if p not in ('mtl-jax', 'pip', 'setuptools')}
  assert installed == lock


def _make(*args, venv):
  result = subprocess.run(['make', '-n', '-C', str(REPO), 'setup', f'VENV={venv}', *args],
                          capture_output=True, text=True, check=False)
  return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize('accel', ('cpu',) + ACCELS)
def test_make_setup_installs_the_matching_lock(accel, tmp_path):
  rc, out = _make(f'ACCEL={accel}', venv=tmp_path / 'venv')
  assert rc == 0, out
  assert f'pip install -q -r {lock_name(accel)}\n' in out
  assert f'echo {accel} > {tmp_path}/venv/.accel' in out


def test_make_setup_keeps_the_venvs_accel_and_rejects_an_unknown_one(tmp_path):
  (tmp_path / 'venv').mkdir()
  (tmp_path / 'venv' / '.accel').write_text('tpu\n')
  rc, out = _make(venv=tmp_path / 'venv')  # a later `make test` keeps the TPU set
  assert rc == 0 and 'pip install -q -r requirements-tpu.lock' in out, out
  rc, out = _make('ACCEL=cuda11', venv=tmp_path / 'venv')
  assert rc != 0 and 'ACCEL=cuda11: choose one of cpu cuda12 cuda13 tpu' in out


def _applies(requirement, extras):
  if requirement.marker is None:
    return True
  return any(requirement.marker.evaluate({**TARGET, 'extra': e}) for e in (extras or {''}))


def closure_problems(lock, requires, root, extras):
  """What `root[extras]` needs, recursively, that `lock` lacks or pins wrongly.

  `requires` maps a package to its Requires-Dist lines; packages without an
  entry (the CPU set, checked by installing it) are not followed. Returns
  (problems, the packages reached).
  """
  problems, seen, todo = [], set(), [(root, frozenset(extras))]
  while todo:
    name, wanted = todo.pop()
    if (name, wanted) in seen:
      continue
    seen.add((name, wanted))
    for line in requires.get(name, ()):
      requirement = Requirement(line)
      if not _applies(requirement, wanted):
        continue
      dep = canonicalize_name(requirement.name)
      if dep not in lock:
        problems.append(f'{name} needs {line!r}, which the lock lacks')
      elif not requirement.specifier.contains(lock[dep], prereleases=True):
        problems.append(f'{name} needs {line!r}, the lock pins {dep}=={lock[dep]}')
      else:
        todo.append((dep, frozenset(requirement.extras)))
  return problems, {name for name, _ in seen}


def test_closure_check_finds_a_missing_or_wrong_pin():
  requires = {'jax': ['jaxlib==1.0', 'jax-cuda12-plugin[with-cuda]==1.0; extra == "cuda12"'],
              'jax-cuda12-plugin': ['nvidia-cudnn-cu12>=9; extra == "with-cuda"',
                                    'foo; sys_platform == "win32"']}
  lock = {'jax': '1.0', 'jaxlib': '1.0', 'jax-cuda12-plugin': '1.0', 'nvidia-cudnn-cu12': '9.1'}
  assert closure_problems(lock, requires, 'jax', {'cuda12'}) == (
      [], {'jax', 'jaxlib', 'jax-cuda12-plugin', 'nvidia-cudnn-cu12'})
  problems, _ = closure_problems({**lock, 'nvidia-cudnn-cu12': '8.9'}, requires, 'jax', {'cuda12'})
  assert problems == ["jax-cuda12-plugin needs 'nvidia-cudnn-cu12>=9; extra == \"with-cuda\"', "
                      'the lock pins nvidia-cudnn-cu12==8.9']
  del lock['nvidia-cudnn-cu12']
  assert 'which the lock lacks' in closure_problems(lock, requires, 'jax', {'cuda12'})[0][0]


def _index_pip(args, tmp_path, timeout):
  """pip against the package index alone (no local wheel folders or mirrors)."""
  env = {k: v for k, v in os.environ.items() if not k.startswith('PIP_') or k == 'PIP_CERT'}
  env.update(PIP_CONFIG_FILE=os.devnull, HOME=str(tmp_path / 'home'),
             PIP_DISABLE_PIP_VERSION_CHECK='1')
  return subprocess.run([sys.executable, '-m', 'pip', *args], capture_output=True, text=True,
                        env=env, timeout=timeout, check=False)


@pytest.mark.network
def test_accelerator_locks_resolve_against_the_index(tmp_path):
  """Every package the accelerator locks add exists for Linux x86_64 / Python 3.12,
  and what jax[ACCEL] needs is in its lock at a version it accepts.

  One `pip install --dry-run --no-deps` of those pins (and jax) for the target
  platform; fast-deps reads each wheel's metadata by range requests, so no CUDA
  wheel is downloaded (~5 s; a plain --dry-run downloaded ~4 GB).
  """
  cpu = read_lock('requirements.lock')
  locks = {accel: read_lock(lock_name(accel)) for accel in ACCELS}
  pins = {'jax': cpu['jax']}
  for lock in locks.values():
    pins.update({p: v for p, v in lock.items() if p not in cpu})
  report = tmp_path / 'report.json'
  args = ['install', '--dry-run', '--ignore-installed', '--no-deps', '--only-binary=:all:',
          '--use-feature=fast-deps', '--python-version', '3.12', '--implementation', 'cp',
          '--abi', 'cp312', *[f'--platform={p}' for p in PLATFORMS], '--retries', '2',
          '--timeout', '30', '-q', '--report', str(report),
          # --target: pip before 24 takes --platform only with it (nothing is written).
          '--target', str(tmp_path / 'target')] + [
              f'{p}=={v}' for p, v in sorted(pins.items())]
  result = _index_pip(args, tmp_path, timeout=240)
  if result.returncode != 0:
    probe = _index_pip(['index', 'versions', 'jax', '--retries', '1', '--timeout', '15'],
                       tmp_path, timeout=60)
    if probe.returncode != 0:
      last = (probe.stderr.strip().splitlines() or ['no output'])[-1]
      reason = f'the package index is unreachable: {last[-300:]}'
      if os.environ.get('MTL_REQUIRE_NETWORK') == '1':
        pytest.fail(f'MTL_REQUIRE_NETWORK=1 but {reason}')
      pytest.skip(reason)
  assert result.returncode == 0, result.stderr[-3000:]
  import json  # pylint: disable=g-import-not-at-top
  installs = json.loads(report.read_text())['install']
  requires = {canonicalize_name(i['metadata']['name']): i['metadata'].get('requires_dist') or []
              for i in installs}
  assert set(requires) == set(pins)
  for accel, lock in locks.items():
    problems, reached = closure_problems(lock, requires, 'jax', {accel})
    assert not problems, (accel, problems)
    strays = {p for p in lock if p not in cpu} - reached
    assert not strays, f'{lock_name(accel)} pins what jax[{accel}] does not need: {strays}'


# --- a missing backend is one line (exit 2) that names the install command ---

def _cli(*argv, platforms=None, tmp_path):
  env = {k: v for k, v in os.environ.items() if k not in ('JAX_PLATFORMS', 'XLA_FLAGS')}
  if platforms is not None:
    env['JAX_PLATFORMS'] = platforms
  return subprocess.run([sys.executable, '-m', 'mtl_jax', *argv], capture_output=True,
                        text=True, env=env, cwd=tmp_path, timeout=120, check=False)


@pytest.mark.skipif(any(backends._installed(p) for p in ('cuda', 'tpu')),  # pylint: disable=protected-access
                    reason='an accelerator backend is installed in this venv')
@pytest.mark.parametrize('verb, platforms, command', [
    ('train', 'cuda', 'make setup ACCEL=cuda12'),
    ('predict', 'cuda', 'make setup ACCEL=cuda12'),
    ('train', 'tpu', 'make setup ACCEL=tpu'),
    ('predict', 'gpu', 'make setup ACCEL=cuda12'),
])
def test_asking_for_a_missing_backend_is_one_line(verb, platforms, command, tmp_path):
  args = (['train', '--config', f'{REPO}/configs/default.py:tiny', '--workdir', 'w']
          if verb == 'train' else
          ['predict', '--workdir', 'w', '--input', 'x.png', '--output', 'out'])
  result = _cli(*args, platforms=platforms, tmp_path=tmp_path)
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f'mtl-jax {verb}: error: JAX_PLATFORMS='), lines
  assert f'`{command}`' in lines[0] and 'not installed' in lines[0]
  assert 'Traceback' not in result.stderr and 'bug' not in result.stderr
  assert not (tmp_path / 'out').exists()


@pytest.mark.skipif(any(backends._installed(p) for p in ('cuda', 'tpu')),  # pylint: disable=protected-access
                    reason='an accelerator backend is installed in this venv')
@pytest.mark.parametrize('config, command', [('gpu8.py', 'make setup ACCEL=cuda12'),
                                             ('tpu.py', 'make setup ACCEL=tpu')])
def test_a_gpu_or_tpu_config_on_a_cpu_install_is_one_line(config, command, tmp_path):
  result = _cli('train', '--config', f'{REPO}/configs/{config}', '--workdir', 'w',
                tmp_path=tmp_path)
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and 'the config targets' in lines[0] and f'`{command}`' in lines[0]
  assert 'JAX_PLATFORMS=cpu to run it on cpu anyway' in lines[0]


def test_which_platform_a_config_targets():
  load = lambda name: loader.load_config(f'{REPO}/configs/{name}')
  assert backends.config_platform(load('gpu8.py')) == 'cuda'
  assert backends.config_platform(load('tpu.py')) == 'tpu'
  assert backends.config_platform(load('default.py:tiny')) == ''
  config = load('default.py:tiny')
  config.hardware.name = 'a workstation'
  assert backends.config_platform(config) == ''


def test_jax_platforms_cpu_runs_a_gpu_config_on_the_cpu(monkeypatch):
  config = loader.load_config(f'{REPO}/configs/gpu8.py')
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  backends.require(config)  # no error: the user asked for the CPU
  monkeypatch.delenv('JAX_PLATFORMS')
  with pytest.raises(backends.MissingBackendError, match='8x NVIDIA A100'):
    backends.require(config)
  assert issubclass(backends.MissingBackendError, cli.UserError)
