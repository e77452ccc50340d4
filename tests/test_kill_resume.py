"""A training run killed at any instant resumes to the same result, bit for bit.

A real `mtl-jax train` subprocess is SIGKILLed (tests/kill_worker.py) at each
point of a fixed schedule: mid-step, mid-evaluation, inside and at the commit
of both kinds of save, before and midway through the removal of an old
checkpoint. After every kill the same command is run again; after the last,
it runs to the end. The final parameters and the best checkpoint must equal
those of an uninterrupted run exactly, and nothing half-written may remain.
"""

import os
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

from mtl_jax import checkpointing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 18
# (event, occurrence within that process): see tests/kill_worker.py. Fixed, so
# every run of this test kills at the same instants; each kill must happen.
SCHEDULE = (
    # From scratch: mid-step, mid-validation, mid-OOD-reference, inside and at
    # the commit of the first best save.
    ('step', 2), ('eval', 1), ('eval', 3), ('write:best', 1), ('commit:best', 1),
    # best/2 is saved, latest/3 is not: the rerun starts at step 0 with a best
    # checkpoint ahead of it, re-reaches step 2 and re-validates it.
    ('commit:latest', 1), ('step', 4),
    # From latest/3: inside and at the commit of latest/6; then latest/9 saved
    # and the removal of latest/3 killed before, then midway.
    ('write:latest', 1), ('commit:latest', 1), ('drop:latest', 1), ('remove:latest', 1),
    # The half-removed folder is swept; from latest/9 on to 12 and 15.
    ('step', 1), ('remove:latest', 1), ('drop:latest', 1),
    # From latest/15: best/16 (mid-OOD-reference, inside, at its commit, then
    # the removal of best/2 before and midway).
    ('eval', 3), ('write:best', 1), ('commit:best', 1), ('drop:best', 1),
    ('remove:best', 1),
    # best/16 is ahead of latest/15 again; then best/18 replaces it.
    ('step', 2), ('commit:best', 1), ('remove:best', 1),
    # best/18 ahead of latest/15: the last save of latest, and its removals.
    ('write:latest', 1), ('drop:latest', 1),
)


def _train(workdir, data_dir, cache_dir, kill='none:0'):
  env = dict(os.environ, XLA_FLAGS='', JAX_PLATFORMS='cpu',
             JAX_COMPILATION_CACHE_DIR=cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  command = [sys.executable, os.path.join(REPO, 'tests', 'kill_worker.py'), kill, '--',
             'train', '--config', os.path.join(REPO, 'configs', 'default.py:tiny'),
             '--workdir', workdir, f'--config.data.data_dir={data_dir}',
             f'--config.train.num_train_steps={STEPS}',
             '--config.train.eval_every_steps=2', '--config.train.checkpoint_every_steps=3',
             '--config.train.keep_checkpoints=2', '--config.train.log_every_steps=1']
  return subprocess.run(command, env=env, cwd=REPO, stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, text=True, timeout=300)


def _params(step_dir):
  state = ocp.StandardCheckpointer().restore(os.path.join(step_dir, 'state'))
  return {'/'.join(str(k) for k in path): np.asarray(leaf) for path, leaf in
          __import__('jax').tree_util.tree_flatten_with_path(
              {'params': state['params'], 'batch_stats': state['batch_stats']})[0]}


@pytest.mark.slow
def test_killed_at_any_point_resumes_to_the_same_parameters(synthetic_data_dir, tmp_path):
  cache = str(tmp_path / 'jax_cache')
  straight = str(tmp_path / 'straight')
  result = _train(straight, synthetic_data_dir, cache)
  assert result.returncode == 0, result.stdout[-3000:]

  killed = str(tmp_path / 'killed')
  for number, (event, n) in enumerate(SCHEDULE):
    result = _train(killed, synthetic_data_dir, cache, f'{event}:{n}')
    assert result.returncode == -9, (
        f'kill {number} ({event}:{n}) did not happen (exit {result.returncode}); '
        f'the schedule no longer fits the run:\n{result.stdout[-3000:]}')
  result = _train(killed, synthetic_data_dir, cache)
  assert result.returncode == 0, result.stdout[-3000:]
  assert 'Traceback' not in result.stdout

  for sub in (checkpointing.LATEST_DIR, checkpointing.BEST_DIR):
    assert checkpointing.finished_steps(os.path.join(killed, sub)) == \
        checkpointing.finished_steps(os.path.join(straight, sub)), sub
    leftovers = [n for n in os.listdir(os.path.join(killed, sub)) if not n.isdigit()]
    assert not leftovers, leftovers
  for which in ('latest', 'best'):
    step = checkpointing.select_step(straight, which)
    assert checkpointing.select_step(killed, which) == step
    sub = checkpointing.LATEST_DIR if which == 'latest' else checkpointing.BEST_DIR
    a = _params(os.path.join(straight, sub, str(step)))
    b = _params(os.path.join(killed, sub, str(step)))
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=f'{which} {key}')
  assert checkpointing.select_step(killed, 'latest') == STEPS
