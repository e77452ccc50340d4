"""One process of a multi-process CPU test job (run by tests/test_multihost.py).

  python tests/multiprocess_worker.py ACTION OUT_JSON WORKDIR DATA_DIR PORT NPROC PID DEVICES

ACTION: `train` runs `train.train_and_evaluate` for a few steps through the
real input pipeline (each process reading its share of every global batch),
which saves a checkpoint and evaluates the validation split (each process
reading its shard); it writes every step's loss, the metrics, a parameter
checksum and the parameters (OUT_JSON with .npz). `restore` restores the
latest checkpoint and writes its parameter checksum and what
`checkpointing._agreed` gives each process for differing values.
"""

import json
import os
import sys

action, out_json, workdir, data_dir, port, nproc, pid, devices = sys.argv[1:9]
os.environ['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
os.environ['JAX_PLATFORMS'] = 'cpu'
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from mtl_jax import checkpointing, distributed, parallel, train  # noqa: E402
from mtl_jax.config import loader  # noqa: E402

nproc, pid = int(nproc), int(pid)
if nproc > 1:
  distributed.initialize(f'127.0.0.1:{port}', nproc, pid,
                         timeout_s=int(os.environ.get('MTL_TEST_JOIN_TIMEOUT', '60')))
repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
config = loader.load_config(f'{repo}/configs/default.py:tiny')
config.data.data_dir = data_dir
config.train.num_train_steps = 3
config.train.log_every_steps = 1
config.train.eval_every_steps = 3
config.train.checkpoint_every_steps = 3


def checksum(state):
  leaves = jax.tree.leaves(parallel.to_host(state['params']))
  return float(sum(np.sum(np.abs(leaf), dtype=np.float64) for leaf in leaves))


if action == 'train':
  losses = []
  flush = train._flush_metrics  # pylint: disable=protected-access

  def recording_flush(pending, writer, timing):
    means = flush(pending, writer, timing)
    if 'train/loss' in means:
      losses.append(means['train/loss'])
    return means

  train._flush_metrics = recording_flush  # pylint: disable=protected-access
  state, scores = train.train_and_evaluate(config, workdir)
  init = train.Trainer(config).init(jax.random.key(config.seed))['params']
  arrays = {}
  for prefix, tree in (('', state['params']), ('init', init)):
    for path, leaf in jax.tree_util.tree_flatten_with_path(parallel.to_host(tree))[0]:
      arrays[prefix + jax.tree_util.keystr(path)] = leaf
  np.savez(out_json + '.npz', **arrays)
  result = {'losses': losses, 'checksum': checksum(state),
            'eval': {k: scores[k] for k in ('dice', 'accuracy', 'auc_covid', 'recon_mse',
                                            'confusion_matrix')}}
else:
  trainer = train.Trainer(config)
  ckpt = checkpointing.Checkpointer(workdir, keep=2)
  state, _ = ckpt.restore(trainer.restore_target())
  ckpt.close()
  result = {'step': int(parallel.to_host(state['step'])), 'checksum': checksum(state),
            # Each process offers its own selection value; all must get process 0's.
            'agreed': [checkpointing._agreed(0.1 + pid / 3),  # pylint: disable=protected-access
                       checkpointing._agreed(None if pid == 0 else 1.0)]}  # pylint: disable=protected-access
result.update(process_index=jax.process_index(), process_count=jax.process_count(),
              device_count=jax.device_count())
with open(out_json, 'w') as f:
  json.dump(result, f)
