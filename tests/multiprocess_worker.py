"""One process of a multi-process CPU test job (run by tests/test_multihost.py).

  python tests/multiprocess_worker.py ACTION OUT_JSON WORKDIR DATA_DIR PORT NPROC PID DEVICES

ACTION: `train` runs two train steps on a fixed global batch (each process
feeding its slice), saves a checkpoint, evaluates the validation split (each
process reading its shard) and writes the losses and metrics; `restore`
restores the latest checkpoint and writes its parameter checksum.
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

from mtl_jax import checkpointing, config_loader, distributed, parallel, runtime, train  # noqa: E402
from mtl_jax.data import pipeline  # noqa: E402

nproc, pid = int(nproc), int(pid)
if nproc > 1:
  distributed.initialize(f'127.0.0.1:{port}', nproc, pid,
                         timeout_s=int(os.environ.get('MTL_TEST_JOIN_TIMEOUT', '60')))
repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
config = config_loader.load_config(f'{repo}/configs/default.py:tiny')
config.data.data_dir = data_dir
trainer = train.Trainer(config)
ckpt = checkpointing.Checkpointer(workdir, keep=2)


def checksum(state):
  leaves = jax.tree.leaves(parallel.to_host(state['params']))
  return float(sum(np.sum(np.abs(leaf), dtype=np.float64) for leaf in leaves))


if action == 'train':
  # The same global batch in every layout: this process feeds its rows.
  full = pipeline.train_dataset(config)[0]
  rows = config.train.global_batch_size // nproc
  local = {k: v[pid * rows:(pid + 1) * rows] for k, v in full.items()}
  state = trainer.init(jax.random.key(0))
  losses = []
  for _ in range(2):
    state, terms = trainer.train_step(state, parallel.global_batch(local, trainer.mesh))
    losses.append(float(parallel.to_host(terms)['loss']))
  ckpt.save_latest(2, state, runtime.checkpoint_meta(config, 2, {}))
  scores = trainer.evaluate(state, 'validation')
  result = {'losses': losses, 'checksum': checksum(state),
            'eval': {k: scores[k] for k in ('dice', 'accuracy', 'auc_covid', 'recon_mse',
                                            'confusion_matrix')}}
else:
  state, _ = ckpt.restore(trainer.restore_target())
  result = {'step': int(parallel.to_host(state['step'])), 'checksum': checksum(state)}
ckpt.close()
result.update(process_index=jax.process_index(), process_count=jax.process_count(),
              device_count=jax.device_count())
with open(out_json, 'w') as f:
  json.dump(result, f)
