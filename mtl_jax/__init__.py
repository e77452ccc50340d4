"""mtl_jax: multi-task chest-CT model in JAX/Flax."""

from mtl_jax import xla_cpu as _xla_cpu

_xla_cpu.apply()  # before JAX creates its CPU backend (mtl_jax/xla_cpu.py says why)
