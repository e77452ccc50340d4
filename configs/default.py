"""The default config: `--config configs/default.py[:PRESET[,PRESET...]]`.

The schema itself (every field, its default, and the presets `full`, `demo`,
`tiny`, the ablations and the `pretrain` stage) lives in the library,
`mtl_jax/config/schema.py`, so that the package never imports a config file.
Write a config of your own as a small delta on it, as `gpu8.py` does.
"""

from mtl_jax.config import schema


def get_config(arg=None):
  return schema.get_config(arg)
