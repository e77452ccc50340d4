"""`mtl-jax plan`: size a job before paying for it, by compiling its real steps.

The train step and the evaluation step are lowered and compiled for the
config's mesh (`hardware.devices` of them, or `--devices`) on the
accelerators present, or on simulated CPU devices where there are too few.
Nothing runs. XLA's own analyses of the compiled per-device program give:
  - memory per device: parameters, optimizer state and batch (the step's
    arguments) and XLA's temporaries (activations kept for the backward pass
    and workspace);
  - FLOPs per step and per example;
  - bytes all-reduced per step (every all-reduce in the program: gradients
    and BatchNorm statistics);
and from a peak (TFLOP/s per device), an assumed MFU and the interconnect
bandwidth, a predicted step time and throughput (compute plus a ring
all-reduce, not overlapped: an upper bound on time).

Compiled on CPU for a GPU/TPU target, the memory figures are estimates: the
CPU compiler fuses differently and keeps bf16 convolutions in f32 (the output
says so).

The host side: the input pipeline's augmentation runs on the host's CPU
cores, so at the predicted examples/s it needs examples/s / (a measured
per-core rate) cores (AUGMENTED_SLICES_PER_CORE).
"""

from __future__ import annotations

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import numpy as np

from mtl_jax import parallel, train
from mtl_jax.errors import ConfigError

_DTYPE_BYTES = {'f64': 8, 'f32': 4, 's32': 4, 'u32': 4, 'bf16': 2, 'f16': 2, 's8': 1,
                'u8': 1, 'pred': 1, 's64': 8, 'u64': 8}
_SHAPE = re.compile(r'\b(f64|f32|bf16|f16|s64|u64|s32|u32|s8|u8|pred)\[([\d,]*)\]')
_ALL_REDUCE = re.compile(r'=\s*(.*?)\s+all-reduce(?:-start)?\(')


# The input pipeline's measured rate: ~170 augmented slices/s per CPU core
# (335-368 slices/s on 2 cores, real.py's six-source mix with augmentation,
# at 256x256), bench/RESULTS.md, "Input pipeline (`bench/input_pipeline.py`)".
# Scaled by pixel count to other image sizes (augmentation is per pixel).
AUGMENTED_SLICES_PER_CORE = 170.0
AUGMENTED_AT_SIZE = 256
AUGMENTED_SOURCE = 'bench/RESULTS.md#input-pipeline-benchinput_pipelinepy'
# A typical host: ~8 cores per accelerator (64 cores on an 8-GPU node).
HOST_CORES_PER_DEVICE = 8


def input_cores(examples_per_second: float, image_size: int) -> float:
  """CPU cores the augmenting input pipeline needs to deliver `examples_per_second`."""
  per_core = AUGMENTED_SLICES_PER_CORE * (AUGMENTED_AT_SIZE / image_size) ** 2
  return examples_per_second / per_core


@dataclasses.dataclass
class StepSize:
  """What one compiled step costs on one device."""
  flops: float
  argument_bytes: int
  temp_bytes: int
  output_bytes: int
  alias_bytes: int
  all_reduce_bytes: int
  compile_seconds: float

  @property
  def peak_bytes(self) -> int:
    """Arguments + temporaries + outputs not written in place of an argument."""
    return self.argument_bytes + self.temp_bytes + self.output_bytes - self.alias_bytes


def all_reduce_bytes(hlo_text: str) -> int:
  """Bytes of every all-reduce result in an HLO module (per device)."""
  total = 0
  for match in _ALL_REDUCE.finditer(hlo_text):
    for dtype, dims in _SHAPE.findall(match.group(1)):
      total += _DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(',') if d)
  return total


def _size(jitted, *abstract_args) -> StepSize:
  import time  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  compiled = jitted.lower(*abstract_args).compile()
  seconds = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  memory = compiled.memory_analysis()
  return StepSize(flops=float(cost.get('flops', 0.0)),
                  argument_bytes=int(memory.argument_size_in_bytes),
                  temp_bytes=int(memory.temp_size_in_bytes),
                  output_bytes=int(memory.output_size_in_bytes),
                  alias_bytes=int(memory.alias_size_in_bytes),
                  all_reduce_bytes=all_reduce_bytes(compiled.as_text()),
                  compile_seconds=seconds)


def choose_devices(count: int):
  """`count` devices of the default backend, or simulated CPU devices."""
  if len(jax.devices()) >= count:
    return jax.devices()[:count], jax.default_backend()
  cpus = jax.devices('cpu')
  if len(cpus) < count:
    raise ConfigError(f'--devices {count}: only {len(cpus)} CPU devices can be simulated '
                      'here (XLA_FLAGS was set before mtl-jax plan could set it)')
  return cpus[:count], 'cpu (simulated)'


def _abstract_batch(config, batch_size: int, sharding, train_batch: bool) -> dict:
  size = int(config.data.image_size)
  shapes = {'image': ((batch_size, size, size), jnp.float32)}
  if train_batch:
    shapes.update({'mask': ((batch_size, size, size), jnp.int32),
                   'has_mask': ((batch_size,), jnp.float32),
                   'label': ((batch_size,), jnp.int32),
                   'label_set': ((batch_size, config.model.num_classes), jnp.float32),
                   'has_label': ((batch_size,), jnp.float32),
                   'soft_mask': ((batch_size, size, size), jnp.float32),
                   'has_soft_mask': ((batch_size,), jnp.float32),
                   'valid': ((batch_size,), jnp.float32)})
  return {k: jax.ShapeDtypeStruct(s, d, sharding=sharding) for k, (s, d) in shapes.items()}


def _tree_bytes(tree) -> int:
  return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def plan(config, devices: int, peak_tflops: float, mfu: float, interconnect_gb_s: float,
         device_memory_gb: float) -> dict:
  """Compile the config's train and eval steps for `devices` devices; size them."""
  if devices < 1:
    raise ConfigError(f'--devices {devices}: give at least 1')
  for what, batch in (('train.global_batch_size', config.train.global_batch_size),
                      ('eval.batch_size', config.eval.batch_size)):
    parallel.check_batch_size(batch, what, num_devices=devices)
  if peak_tflops <= 0:
    raise ConfigError(f'--peak_tflops {peak_tflops:g}: give the accelerator\'s peak '
                      'TFLOP/s per device (e.g. 312 for an A100 in bf16, 197 for a TPU v5e)')
  if not 0 < mfu <= 1:
    raise ConfigError(f'--mfu {mfu:g}: give a fraction in (0, 1], e.g. 0.4')
  chosen, backend = choose_devices(devices)
  trainer = train.Trainer(config, chosen)
  repl, sharded = trainer.runtime.replicated, trainer.runtime.batch_sharded
  state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl),
                       trainer.abstract_state)
  train_size = _size(trainer.train_step, state, _abstract_batch(
      config, config.train.global_batch_size, sharded, True))
  variables = train.variables_of(state)
  eval_size = _size(trainer.predict, variables, _abstract_batch(
      config, config.eval.batch_size, sharded, False)['image'])
  global_batch = int(config.train.global_batch_size)
  compute_s = train_size.flops / (peak_tflops * 1e12 * mfu)
  ring = 2 * (devices - 1) / devices  # bytes each device sends per byte reduced
  comm_s = (train_size.all_reduce_bytes * ring / (interconnect_gb_s * 1e9)
            if devices > 1 and interconnect_gb_s > 0 else 0.0)
  step_s = compute_s + comm_s
  result = {
      'config': config.preset, 'devices': devices, 'backend': backend,
      'global_batch': global_batch, 'per_device_batch': global_batch // devices,
      'eval_batch': int(config.eval.batch_size),
      'params_bytes': _tree_bytes(state['params']),
      'batch_stats_bytes': _tree_bytes(state['batch_stats']),
      'optimizer_bytes': _tree_bytes(state['opt_state']),
      'train': dataclasses.asdict(train_size) | {'peak_bytes': train_size.peak_bytes},
      'eval': dataclasses.asdict(eval_size) | {'peak_bytes': eval_size.peak_bytes},
      'flops_per_step': train_size.flops * devices,
      'flops_per_example': train_size.flops * devices / global_batch,
      'peak_tflops': peak_tflops, 'mfu': mfu, 'interconnect_gb_s': interconnect_gb_s,
      'compute_seconds': compute_s, 'all_reduce_seconds': comm_s,
      'step_seconds': step_s, 'examples_per_second': global_batch / step_s,
      'image_size': int(config.data.image_size),
      'input_cores': input_cores(global_batch / step_s, int(config.data.image_size)),
      'host_cores_typical': HOST_CORES_PER_DEVICE * devices,
  }
  needed_gb = max(train_size.peak_bytes, eval_size.peak_bytes) / 1e9
  if device_memory_gb > 0 and needed_gb > device_memory_gb:
    raise ConfigError(
        f'{config.preset}: a step needs {needed_gb:.1f} GB per device, more than '
        f'--device_memory_gb {device_memory_gb:g}: lower train.global_batch_size or '
        'data.image_size, or use more devices')
  return result


def describe(r: dict) -> str:
  gb = lambda b: f'{b / 1e9:.2f} GB'
  t = r['train']
  lines = [
      f'{r["config"]} on {r["devices"]} device(s) ({r["backend"]}); global batch '
      f'{r["global_batch"]}, {r["per_device_batch"]} per device',
      'per device, train step:',
      f'  parameters {gb(r["params_bytes"])}, optimizer state {gb(r["optimizer_bytes"])}, '
      f'BatchNorm statistics {gb(r["batch_stats_bytes"])}',
      f'  arguments (state + batch) {gb(t["argument_bytes"])}, XLA temporaries '
      f'(activations, workspace) {gb(t["temp_bytes"])}, peak {gb(t["peak_bytes"])}',
      f'  {t["flops"] / 1e12:.3f} TFLOP; all-reduce {t["all_reduce_bytes"] / 1e6:.1f} MB '
      f'(compiled in {t["compile_seconds"]:.1f} s)',
      f'per device, eval step: peak {gb(r["eval"]["peak_bytes"])}, '
      f'{r["eval"]["flops"] / 1e12:.3f} TFLOP',
      f'per step: {r["flops_per_step"] / 1e12:.2f} TFLOP, '
      f'{r["flops_per_example"] / 1e9:.2f} GFLOP per example',
      f'predicted at {r["peak_tflops"]:g} TFLOP/s per device and MFU {r["mfu"]:.0%}: '
      f'compute {r["compute_seconds"] * 1e3:.1f} ms + all-reduce '
      f'{r["all_reduce_seconds"] * 1e3:.1f} ms at {r["interconnect_gb_s"]:g} GB/s = '
      f'{r["step_seconds"] * 1e3:.1f} ms per step, {r["examples_per_second"]:.0f} examples/s',
      memory_source(r),
      f'input pipeline: ~{r["input_cores"]:.0f} cores of augmentation at '
      f'{r["examples_per_second"]:,.0f} slices/s (measured {AUGMENTED_SLICES_PER_CORE:.0f} '
      f'slices/s per core at {AUGMENTED_AT_SIZE} px'
      + (f', scaled by pixels to {r["image_size"]} px' if r['image_size'] != AUGMENTED_AT_SIZE
         else '') + f', {AUGMENTED_SOURCE})',
  ]
  if r['input_cores'] > r['host_cores_typical']:
    lines.append(
        f'warning: the input pipeline needs ~{r["input_cores"]:.0f} cores, more than a '
        f'typical host\'s {r["host_cores_typical"]} ({HOST_CORES_PER_DEVICE} per device): '
        'the devices would wait for data at this rate')
  return '\n'.join(lines)


def memory_source(r: dict) -> str:
  """Where the memory figures come from: this backend's compiler, or CPU's for another target."""
  if r['backend'].startswith('cpu'):
    return (f'memory figures: compiled on {r["devices"]} {r["backend"]} device(s); for a '
            'GPU/TPU target they are estimates (the CPU compiler fuses differently and '
            'keeps bf16 convolutions in f32)')
  return f'memory figures: XLA\'s analysis of the step compiled for {r["backend"]}'

