"""Test setup: 8 simulated CPU devices, tiny data, the shared CT samples.

XLA_FLAGS must be set before jax initialises, so it is set here, at import.
Every test then runs data-parallel over 8 devices, as on a GPU node.
"""

import os

_EIGHT_DEVICES = '--xla_force_host_platform_device_count=8'
if _EIGHT_DEVICES not in os.environ.get('XLA_FLAGS', '').split():  # once per xdist worker
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + _EIGHT_DEVICES).strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# One XLA compilation cache for the session, shared with the subprocesses the
# tests start: the many tiny runs compile the same programs again and again.
# pytest-xdist's workers inherit this environment from the controller, so
# they share its cache, and only the controller removes it.
_OWN_XLA_CACHE = None  # made here, so removed at the session's end
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  import tempfile  # pylint: disable=g-import-not-at-top
  _OWN_XLA_CACHE = tempfile.mkdtemp(prefix='mtl-jax-test-xla-')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _OWN_XLA_CACHE
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
# The public CT samples beside the development checkout (or MTL_MANUAL_DIR,
# the builders' own setting for where the releases are).
SHARED_DATA = pathlib.Path(os.environ.get('MTL_MANUAL_DIR') or REPO.parent / 'shared' / 'data')


def pytest_sessionfinish(session, exitstatus):  # pylint: disable=unused-argument
  if _OWN_XLA_CACHE is not None:
    import shutil  # pylint: disable=g-import-not-at-top
    shutil.rmtree(_OWN_XLA_CACHE, ignore_errors=True)


def pytest_collection_modifyitems(items):
  """Tests that read ../shared/data carry the `shared_data` marker
  (`pytest -m "not shared_data"` leaves them out)."""
  for item in items:
    if 'shared_data' in getattr(item, 'fixturenames', ()):
      item.add_marker(pytest.mark.shared_data)


# -- the fast tier (`make test-fast`: `-m "not slow"`) ----------------------
# The fast tier trains one model: the shared 2-step `model_dir` below, which
# the predict and report tests read. A test that trains any other model (in
# this process, or through the CLI in a subprocess) carries `slow`. In the
# fast tier, training in this process from an unmarked test fails at once and
# names the marker, so the tier cannot grow slow unnoticed (checked where the
# loop starts, `train._run`, so a run refused before it, e.g. for a missing
# dataset, is no training); training in a subprocess (kill/resume,
# multi-host, sweeps) is marked by hand.
_fast_tier = False
_current_item = None
_training_shared_model = False


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
  """The test whose set-up or call is running (its fixtures train for it)."""
  global _current_item
  _current_item = item


def pytest_configure(config):
  global _fast_tier
  _fast_tier = 'not slow' in (config.option.markexpr or '')
  if not _fast_tier:
    return
  from mtl_jax import train  # pylint: disable=g-import-not-at-top
  real = train._run  # pylint: disable=protected-access

  def checked(run_config, *args, **kwargs):
    item = _current_item
    if not _training_shared_model and item is not None and not item.get_closest_marker('slow'):
      pytest.fail(f'{item.nodeid} trains a model ({run_config.preset}) without '
                  '@pytest.mark.slow: mark it, or use the shared `model_dir` fixture',
                  pytrace=False)
    return real(run_config, *args, **kwargs)
  train._run = checked  # pylint: disable=protected-access


@pytest.fixture(scope='session')
def shared_data() -> pathlib.Path:
  """../shared/data, or a skip (a failure when MTL_REQUIRE_SHARED=1, as in CI)."""
  if (SHARED_DATA / 'README.md').exists():
    os.environ.setdefault('MTL_MANUAL_DIR', str(SHARED_DATA))  # builders read it by default
    return SHARED_DATA
  reason = (f'real CT samples not found at {SHARED_DATA} (only present beside '
            'the development checkout)')
  if os.environ.get('MTL_REQUIRE_SHARED') == '1':
    pytest.fail(f'MTL_REQUIRE_SHARED=1 but {reason}')
  pytest.skip(reason)


@pytest.fixture(scope='session')
def synthetic_data_dir(tmp_path_factory) -> str:
  """A small synthetic_ct build at 64 px, shared by the end-to-end tests."""
  from mtl_jax.tfds_builders import registry
  data_dir = str(tmp_path_factory.mktemp('data'))
  registry.build_dataset('synthetic_ct', data_dir, 64, num_train=64,
                         num_validation=32, num_test=32)
  return data_dir


@pytest.fixture
def tiny_config(synthetic_data_dir):
  from mtl_jax.config import loader
  config = loader.load_config(str(REPO / 'configs' / 'default.py') + ':tiny')
  config.data.data_dir = synthetic_data_dir
  return config


@pytest.fixture(scope='session')
def model_dir(synthetic_data_dir, tmp_path_factory):
  """A tiny three-task model trained for 2 steps (with its OOD reference)."""
  from mtl_jax import train
  from mtl_jax.config import loader
  config = loader.load_config(str(REPO / 'configs' / 'default.py') + ':tiny')
  config.data.data_dir = synthetic_data_dir
  config.train.num_train_steps = 2
  config.train.eval_every_steps = config.train.checkpoint_every_steps = 2
  config.eval.bootstrap_resamples = 0
  workdir = str(tmp_path_factory.mktemp('model'))
  global _training_shared_model
  _training_shared_model = True
  try:
    train.train_and_evaluate(config, workdir)
  finally:
    _training_shared_model = False
  return workdir


@pytest.fixture(scope='session')
def predictor(model_dir):
  from mtl_jax import predict
  return predict.Predictor(model_dir, batch_size=8)
