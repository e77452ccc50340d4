"""Cloud TPU slice (e.g. v4-32 / v5e-32): larger global batch, bf16, GroupNorm.

GroupNorm keeps results independent of the per-core batch, which on large
slices is small. Usage: see launch/tpu_vm.sh.
"""

from mtl_jax.config import hardware, schema


def get_config(arg=None):
  return hardware.tpu_slice(schema.get_config(arg))
