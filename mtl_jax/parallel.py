"""Device mesh and shardings for data parallelism (multi-host ready).

One `Mesh` with a `data` axis over every device of every process. Parameters
and optimizer state are replicated, batches are sharded along their leading
axis. `jit` with these shardings is what `pmap` used to be, and the same code
runs on 1 CPU, 8 GPUs or a TPU pod slice.
"""

from __future__ import annotations

import logging

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mtl_jax.errors import ConfigError

DATA_AXIS = 'data'


def create_mesh(devices=None) -> Mesh:
  """A 1-D mesh over all devices. `jax.sharding.Mesh` keeps Auto axis types
  (jax>=0.12's `make_mesh` defaults to Explicit, which breaks some grads)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """A copy on every device of the mesh (parameters, optimiser state)."""
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Split along the leading (batch) axis over the `data` axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch_size: int, what: str = 'train.global_batch_size',
                     num_devices: int | None = None):
  """Fail before compiling when the batch cannot be split evenly."""
  n = jax.device_count() if num_devices is None else num_devices
  if global_batch_size % n:
    below, above = global_batch_size // n * n, (global_batch_size // n + 1) * n
    near = ' or '.join(str(b) for b in (below, above) if b)
    raise ConfigError(f'{what}={global_batch_size} is not divisible by the '
                      f'{n} devices; use a multiple of {n}, e.g. {near} '
                      f'(--config.{what}={above})')


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Assemble each process's local numpy batch into one global jax.Array."""
  sharding = batch_sharded(mesh)
  return {key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
          for key, value in local_batch.items()
          if np.asarray(value).dtype.kind in 'biuf'}


def to_host(tree):
  """Fetch a (possibly multi-process) global pytree to every host as numpy."""
  if jax.process_count() > 1:
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)


def log_topology():
  logging.info('process %d of %d; %d local / %d global devices (%s)',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(),
               jax.devices()[0].platform)
