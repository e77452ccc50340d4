"""mtl_jax: multi-task chest-CT model in JAX/Flax."""
