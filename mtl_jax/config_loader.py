"""Load `path/to/config.py[:ARG]` and apply `--config.KEY=VALUE` overrides.

The same contract as ml_collections' `config_flags`, without absl's global
flag registry, so that each CLI verb can parse its own arguments. Every
mistake (missing file, unknown preset, unknown key, wrong type) is a
`ConfigError` with a one-line message that lists what is valid.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import sys

import ml_collections

DEFAULT_CONFIG = 'configs/default.py'


from mtl_jax.errors import ConfigError  # noqa: F401  (raised here; importers use it)


def _resolve_path(path: str) -> str:
  """A config file by path, or else the copy installed with the package."""
  if os.path.exists(path):
    return path
  module = os.path.splitext(path.replace(os.sep, '.'))[0]
  if module.startswith('configs.'):
    try:
      spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
      spec = None
    if spec is not None and spec.origin:
      return spec.origin
  raise ConfigError(f'config file {path!r} not found')


def load_config(spec: str = DEFAULT_CONFIG,
                overrides: list[str] | None = None) -> ml_collections.ConfigDict:
  """`spec` is 'file.py' or 'file.py:ARG'; ARG is passed to `get_config`."""
  path, _, arg = spec.partition(':')
  path = _resolve_path(path)
  root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
  if root not in sys.path:  # lets `configs/gpu8.py` import `configs.default`
    sys.path.insert(0, root)
  module_spec = importlib.util.spec_from_file_location(
      f'_mtl_config_{abs(hash(path))}', path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except SyntaxError as e:
    raise ConfigError(f'config file {path!r} is malformed: {e}') from None
  if not hasattr(module, 'get_config'):
    raise ConfigError(f'config file {path!r} defines no get_config()')
  try:
    config = module.get_config(arg or None)
  except ValueError as e:
    raise ConfigError(f'{path}: {e}') from None
  apply_overrides(config, overrides or [])
  return config


def _all_keys(config, prefix=''):
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from _all_keys(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}'


def _parse_value(text: str, current):
  if isinstance(current, str):
    return text
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    if isinstance(current, bool) and text.lower() in ('true', 'false'):
      return text.lower() == 'true'
    raise ConfigError(f'cannot parse {text!r} as a value like {current!r}') from None
  if isinstance(current, tuple) and isinstance(value, list):
    value = tuple(value)
  if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if current is not None and not isinstance(value, type(current)):
    raise ConfigError(f'expected a {type(current).__name__} like {current!r}, '
                      f'got {text!r}')
  return value


def apply_overrides(config, overrides: list[str]):
  """Apply 'a.b=value' strings (a leading '--config.' is optional)."""
  for item in overrides:
    key, sep, text = item.removeprefix('--').removeprefix('config.').partition('=')
    if not sep:
      raise ConfigError(f'override {item!r} must look like --config.KEY=VALUE')
    node, *parents = config, *key.split('.')[:-1]
    for part in parents:
      if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
        node = None
        break
      node = node[part]
    leaf = key.split('.')[-1]
    if node is None or leaf not in node:
      valid = ', '.join(_all_keys(config))
      raise ConfigError(f'unknown config key {key!r}; valid keys: {valid}')
    try:
      node[leaf] = _parse_value(text, node[leaf])
    except ConfigError as e:
      raise ConfigError(f'--config.{key}: {e}') from None


def to_json(config) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)


def from_dict(data: dict) -> ml_collections.ConfigDict:
  """A config saved in a checkpoint; fields added since then take their defaults.

  Only whole fields are filled in (`data.standardize`), never entries inside a
  saved value such as `data.sources`.
  """
  from configs import default  # pylint: disable=g-import-not-at-top
  data = dict(data)
  for section, fields in default.get_config().to_dict().items():
    if isinstance(fields, dict) and isinstance(data.get(section), dict):
      data[section] = {**{k: v for k, v in fields.items() if k not in data[section]},
                       **data[section]}
  return ml_collections.ConfigDict(data)
