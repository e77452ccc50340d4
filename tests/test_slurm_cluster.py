"""Issue 39: the SLURM launch scripts under a real one-node SLURM cluster on localhost.

launch/slurm_gpu.sbatch is submitted with `sbatch` as 2 tasks x 4 simulated
CPU devices (CPU_DEVICES=4); jax.distributed finds the other process from
SLURM's own environment, and the run equals the 1-process run by
tests/test_multihost.py's comparison. The ablation's SLURM array, as
`launch/sweep.py --dry_run` writes it, runs as written and `--collect`
tables it. Daemons, config and state live in tmp_path (tests/slurm_cluster.py).
Without the SLURM binaries (or root) the tests skip; MTL_REQUIRE_SLURM=1 (CI)
makes that a failure.
"""

import csv
import glob
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

import slurm_cluster
from conftest import REPO
from test_multihost import _assert_same_params

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

# tests/multiprocess_worker.py's run, through `mtl-jax train`.
STEPS = ['--config.train.num_train_steps=3', '--config.train.log_every_steps=1',
         '--config.train.eval_every_steps=3', '--config.train.checkpoint_every_steps=3']
# --oversubscribe: the two jobs share the CPUs, so they run at once on 2 cores.
CPU_JOB = ['--gpus-per-node=0', '--cpus-per-task=1', '--time=0:15:00', '--oversubscribe']
VENV = {'VENV': sys.prefix}  # the venv running the tests (make test: the repo's .venv)


@pytest.fixture(scope='module')
def slurm(request, tmp_path_factory):
  reason = slurm_cluster.unavailable()
  if reason:
    if os.environ.get('MTL_REQUIRE_SLURM') == '1':
      pytest.fail(f'MTL_REQUIRE_SLURM=1 but {reason}')
    pytest.skip(reason)
  cluster = slurm_cluster.Cluster(tmp_path_factory.mktemp('slurm'))
  request.addfinalizer(cluster.stop)  # before start: a half-started cluster is stopped too
  cluster.start()
  return cluster


def _job_output(path) -> str:
  return path.read_text(errors='replace') if path.exists() else f'({path} not written)'


def _train_losses(workdir) -> list[float]:
  """train/loss of every step, from the run's TensorBoard events (float32, as logged)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  losses = {}
  for path in sorted(glob.glob(os.path.join(workdir, 'tensorboard', 'events.out.tfevents.*'))):
    with open(path, 'rb') as f:
      data = f.read()
    i = 0
    while i + 12 <= len(data):  # TFRecord: length, its CRC, data, its CRC
      (n,) = struct.unpack('<Q', data[i:i + 8])
      event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
      i += 12 + n + 4
      for value in event.summary.value:
        if value.tag == 'train/loss':
          losses[event.step] = value.simple_value
  return [losses[step] for step in sorted(losses)]


def _params(workdir, data_dir) -> tuple[dict, float]:
  """The final parameters (and the initial ones as 'init' + key), as
  tests/multiprocess_worker.py saves them, and their checksum."""
  import jax  # pylint: disable=g-import-not-at-top
  from mtl_jax import checkpointing, parallel, train  # pylint: disable=g-import-not-at-top
  from mtl_jax.config import loader  # pylint: disable=g-import-not-at-top
  config = loader.load_config(f'{REPO}/configs/default.py:tiny')
  config.data.data_dir = data_dir
  trainer = train.Trainer(config)
  ckpt = checkpointing.Checkpointer(str(workdir), keep=2)
  state, _ = ckpt.restore(trainer.restore_target())
  ckpt.close()
  assert int(parallel.to_host(state['step'])) == 3
  init = trainer.init(jax.random.key(config.seed))['params']
  arrays = {}
  for prefix, tree in (('', state['params']), ('init', init)):
    for path, leaf in jax.tree_util.tree_flatten_with_path(parallel.to_host(tree))[0]:
      arrays[prefix + jax.tree_util.keystr(path)] = np.asarray(leaf)
  final = jax.tree.leaves(parallel.to_host(state['params']))
  return arrays, float(sum(np.sum(np.abs(leaf), dtype=np.float64) for leaf in final))


def _eval(workdir) -> dict:
  import json  # pylint: disable=g-import-not-at-top
  with open(os.path.join(workdir, 'eval_validation_last.json')) as f:
    return json.load(f)


def test_slurm_gpu_sbatch_on_two_tasks_equals_one_process(slurm, tmp_path, synthetic_data_dir):
  """2 tasks x 4 CPU devices, joined by jax.distributed from SLURM_* alone,
  against 1 task x 8 devices (no jax.distributed): both through
  launch/slurm_gpu.sbatch, submitted at once (the partition shares CPUs)."""
  # The coordinator (process 0, on the first node of SLURM_STEP_NODELIST)
  # listens on loopback only, on a free port rather than one its job id picks.
  port = slurm_cluster.free_ports(1)[0]
  coordinator = {'JAX_COORDINATOR_PORT': str(port),
                 'JAX_COORDINATOR_BIND_ADDRESS': f'127.0.0.1:{port}'}
  jobs = {}
  for name, tasks, devices in (('2x4', 2, 4), ('1x8', 1, 8)):
    out = tmp_path / f'{name}.out'
    cmd = ['sbatch', '--wait', *CPU_JOB, f'--ntasks-per-node={tasks}', f'--output={out}',
           f'--job-name=mh_{name}', 'launch/slurm_gpu.sbatch', 'configs/default.py:tiny',
           str(tmp_path / name), f'--config.data.data_dir={synthetic_data_dir}', *STEPS]
    jobs[name] = (out, subprocess.Popen(
        [slurm_cluster.which(cmd[0])] + cmd[1:], cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
        env={**slurm.env, **VENV, **coordinator, 'CPU_DEVICES': str(devices)}))
  for name, (out, proc) in jobs.items():
    try:
      submitted = proc.communicate(timeout=600)[0]
    except subprocess.TimeoutExpired:
      for _, other in jobs.values():
        other.kill()
      slurm.cancel_all()
      pytest.fail(f'job {name} not done in 600 s\n{_job_output(out)[-3000:]}\n{slurm.logs()}')
    assert proc.returncode == 0, f'{name}: {submitted}\n{_job_output(out)[-4000:]}'
  two, one = (_job_output(tmp_path / f'{n}.out') for n in ('2x4', '1x8'))
  # Each task joined as its own process of 2, seeing all 8 devices.
  for pid in (0, 1):
    assert f'distributed: process {pid} of 2, 4 local / 8 global devices' in two, two[-3000:]
  assert 'distributed:' not in one  # 1 task: no jax.distributed
  # Every process holds the same metrics (each logs its own line).
  metrics = [line.split(' ', 1)[1] for line in two.splitlines() if '] validation/' in line]
  assert len(metrics) == 2 and metrics[0] == metrics[1], metrics

  # tests/test_multihost.py's comparison of 2x4 with 1x8.
  w2, w1 = tmp_path / '2x4', tmp_path / '1x8'
  losses2, losses1 = _train_losses(w2), _train_losses(w1)
  assert len(losses2) == 3
  assert losses1 == pytest.approx(losses2, rel=1e-5)
  (params2, checksum2), (params1, checksum1) = (_params(w, synthetic_data_dir) for w in (w2, w1))
  assert checksum1 == pytest.approx(checksum2, rel=1e-5)
  _assert_same_params(params1, params2)
  eval2, eval1 = _eval(w2), _eval(w1)
  assert eval2['confusion_matrix'] == eval1['confusion_matrix']
  for key in ('dice', 'accuracy', 'auc_covid', 'recon_mse'):
    assert eval2[key] == pytest.approx(eval1[key], rel=1e-3, abs=1e-4), key


def test_ablation_array_runs_as_written_and_is_collected(slurm, tmp_path, synthetic_data_dir):
  """The tiny plan (2 arms x 2 seeds) as `sweep.py --dry_run` writes it:
  submitted from another folder, it cds into the repo, runs the venv's
  mtl-jax on the given data_dir within its time limit; --collect tables it."""
  root, script = tmp_path / 'ablation', tmp_path / 'ablation.sbatch'
  sweep = [sys.executable, str(REPO / 'launch' / 'sweep.py'), '--plan',
           'configs/ablation.py:tiny', '--root', str(root),
           '--set', f'data.data_dir={synthetic_data_dir}']
  dry = subprocess.run(sweep + ['--dry_run', '--sbatch', str(script), '--time', '0:15:00',
                                '--gpus_per_task', '0'],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
  assert dry.returncode == 0, dry.stderr
  text = script.read_text()
  assert text in dry.stdout  # the file is what --dry_run prints
  assert f'cd {REPO}\n' in text and f'VENV="${{VENV:-{REPO}/.venv}}"' in text
  assert '#SBATCH --time=0:15:00' in text and '#SBATCH --array=0-3' in text
  assert 'gpus' not in text
  runs = [line for line in text.splitlines() if line.startswith(('  0)', '  1)', '  2)', '  3)'))]
  assert len(runs) == 4
  for line in runs:
    assert line.count('"$VENV/bin/mtl-jax" ') == 2 and ' mtl-jax ' not in line
    assert f'--config.data.data_dir={synthetic_data_dir} ' in line

  logs = tmp_path / 'logs'
  logs.mkdir()
  job = slurm.sbatch_wait('--output=slurm-%A_%a.out', str(script), cwd=logs,
                          env=VENV, timeout=600)
  outputs = '\n'.join(f'--- {p.name}\n{p.read_text(errors="replace")[-2000:]}'
                      for p in sorted(logs.iterdir()))
  assert job.returncode == 0, job.stdout + job.stderr + outputs
  assert len(list(logs.glob('slurm-*_*.out'))) == 4, outputs

  collected = subprocess.run(sweep + ['--collect'], cwd=REPO, capture_output=True, text=True,
                             timeout=300)
  assert collected.returncode == 0, collected.stderr
  assert '4 of 4 runs' in collected.stdout and 'Missing:' not in collected.stdout
  with open(root / 'results.csv') as f:
    rows = list(csv.DictReader(f))
  assert sorted((r['arm'], r['seed']) for r in rows) == [
      ('full', '0'), ('full', '1'), ('seg_only', '0'), ('seg_only', '1')]
  assert (root / 'results.md').read_text().startswith('## ablation:tiny')
