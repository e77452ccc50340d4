"""Multi-host start-up: JAX's own multi-controller runtime, guarded and logged.

One process per host (or per node). `jax.distributed.initialize()` detects
Cloud TPU VMs and SLURM allocations by itself; anywhere else the coordinator
address, process count and id are given explicitly (flags or the
MTL_COORDINATOR_ADDRESS / MTL_NUM_PROCESSES / MTL_PROCESS_ID variables).
Single-process runs skip it entirely.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

import jax

from mtl_jax.errors import DistributedError

_initialized = False


def _cluster_detected() -> bool:
  slurm = int(os.environ.get('SLURM_NTASKS', '1')) > 1 and 'SLURM_JOB_ID' in os.environ
  tpu = 'TPU_WORKER_HOSTNAMES' in os.environ or 'CLOUD_TPU_TASK_ID' in os.environ
  return slurm or tpu


def initialize(coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None,
               timeout_s: int = 300) -> None:
  """Join the multi-process runtime if this run is one of several processes.

  A process that cannot reach the others fails after `timeout_s` with a
  message naming the coordinator, rather than hanging forever.
  """
  global _initialized
  if _initialized:
    return
  coordinator_address = coordinator_address or os.environ.get('MTL_COORDINATOR_ADDRESS')
  num_processes = num_processes or _int_env('MTL_NUM_PROCESSES')
  process_id = process_id if process_id is not None else _int_env('MTL_PROCESS_ID')
  explicit = coordinator_address is not None or (num_processes or 1) > 1
  if not explicit and not _cluster_detected():
    return
  if explicit and (coordinator_address is None or num_processes is None
                   or process_id is None):
    raise DistributedError('multi-process runs need --coordinator_address, '
                     '--num_processes and --process_id together')
  what = (f'could not join the multi-process run (coordinator '
          f'{coordinator_address or "auto-detected"}, process {process_id} of '
          f'{num_processes}) within {timeout_s}s')
  # JAX aborts the process from C++ when peers never arrive; this watchdog
  # exits first with a message that says what happened.
  watchdog = threading.Timer(max(1.0, timeout_s - 1.0), _give_up,
                             (f'{what}: a process is missing or unreachable',))
  watchdog.daemon = True
  watchdog.start()
  try:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               initialization_timeout=timeout_s)
  except Exception as e:  # pylint: disable=broad-except
    raise DistributedError(f'{what}: {str(e).splitlines()[0]}') from e
  finally:
    watchdog.cancel()
  _initialized = True
  logging.info('distributed: process %d of %d, %d local / %d global devices',
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())


def _give_up(message: str):
  print(f'mtl-jax: error: {message}', file=sys.stderr, flush=True)
  os._exit(2)  # pylint: disable=protected-access


def _int_env(name: str):
  value = os.environ.get(name)
  return int(value) if value not in (None, '') else None
