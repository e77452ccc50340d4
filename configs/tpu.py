"""Cloud TPU slice (e.g. v4-32 / v5e-32): larger global batch, bf16, GroupNorm.

GroupNorm keeps results independent of the per-core batch, which on large
slices is small. Usage: see launch/tpu_vm.sh.
"""

from mtl_jax.config import schema


def get_config(arg=None):
  config = schema.get_config(arg)
  config.train.global_batch_size = 256
  config.optim.learning_rate = 3e-3
  config.optim.warmup_steps = 500
  config.model.compute_dtype = 'bfloat16'
  config.model.norm = 'group'
  config.data.num_workers = 16
  config.eval.batch_size = 512
  config.hardware.update(name='Cloud TPU v5e-32 (32 chips)', devices=32,
                         peak_tflops=197.0, memory_gb=16.0, interconnect_gb_s=200.0)
  return config
