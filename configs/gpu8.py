"""One node with 8 GPUs: the default model, a global batch of 8 x 16, bf16 compute.

Usage: mtl-jax train --config configs/gpu8.py[:PRESET] --workdir DIR
"""

from mtl_jax.config import schema


def get_config(arg=None):
  config = schema.get_config(arg)
  config.train.global_batch_size = 128
  config.optim.learning_rate = 2e-3
  config.model.compute_dtype = 'bfloat16'
  config.data.num_workers = 8
  config.eval.batch_size = 256
  config.hardware.update(name='8x NVIDIA A100 80GB (one node, NVLink)', devices=8,
                         peak_tflops=312.0, memory_gb=80.0, interconnect_gb_s=300.0)
  return config
