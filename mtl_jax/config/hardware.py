"""Hardware deltas shared by config files (which never import each other)."""


def tpu_slice(config):
  """A Cloud TPU slice (v5e-32): global batch 256, bf16, GroupNorm (results
  independent of the small per-core batch), 16 input workers, and the
  slice's hardware section for `mtl-jax estimate`. Changes `config` in place
  and returns it."""
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
