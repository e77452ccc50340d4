"""Load `path/to/config.py[:ARG]` and apply `--config.KEY=VALUE` overrides.

The same contract as ml_collections' `config_flags`, without absl's global
flag registry, so that each CLI verb can parse its own arguments. Every
mistake (missing file, unknown preset, unknown key, wrong type) is a
`ConfigError` with a one-line message that lists what is valid. `from_dict`
reads a config saved in a checkpoint, filling only fields it predates, from
an explicit table of their old values.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import logging
import os

import ml_collections

from mtl_jax import dotted_paths

DEFAULT_CONFIG = 'configs/default.py'
DEMO_CONFIG = DEFAULT_CONFIG + ':demo'  # what `make demo` / `mtl-jax demo` train


from mtl_jax.errors import ConfigError  # noqa: F401  (raised here; importers use it)


# The project's configs ship inside the package as `mtl_jax.configs`
# (pyproject.toml maps the repository's configs/ folder there).
PACKAGED_CONFIGS = 'mtl_jax.configs'


def _resolve_path(path: str) -> str:
  """A config file by path, or else the copy installed with the package
  (`configs/real.py` outside a checkout)."""
  if os.path.exists(path):
    return path
  parts = os.path.normpath(path).split(os.sep)
  if len(parts) == 2 and parts[0] == 'configs':
    try:
      spec = importlib.util.find_spec(PACKAGED_CONFIGS)
    except ModuleNotFoundError:
      spec = None
    if spec is not None and spec.submodule_search_locations:
      for folder in spec.submodule_search_locations:
        candidate = os.path.join(folder, parts[1])
        if os.path.exists(candidate):
          return candidate
  raise ConfigError(f'config file {path!r} not found')


def load_module(path: str):
  """A config file as a module, by path (config files are not imported by
  name: they import the library, never each other)."""
  path = _resolve_path(path)
  module_spec = importlib.util.spec_from_file_location(
      f'_mtl_config_{abs(hash(path))}', path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except SyntaxError as e:
    raise ConfigError(f'config file {path!r} is malformed: {e}') from None
  except ModuleNotFoundError as e:
    if e.name in ('configs', 'tfds_builders'):  # a config written for mtl-jax <= 0.1.0
      raise ConfigError(f'config file {path!r} imports {e.name!r}, which is no longer a '
                        'package: build on `from mtl_jax.config import schema` '
                        '(schema.get_config(arg)), as configs/gpu8.py does') from None
    raise
  return module


def load_config(spec: str = DEFAULT_CONFIG,
                overrides: list[str] | None = None) -> ml_collections.ConfigDict:
  """`spec` is 'file.py' or 'file.py:ARG'; ARG is passed to `get_config`."""
  path, _, arg = spec.partition(':')
  module = load_module(path)
  if not hasattr(module, 'get_config'):
    raise ConfigError(f'config file {path!r} defines no get_config()')
  try:
    config = module.get_config(arg or None)
  except ValueError as e:
    raise ConfigError(f'{path}: {e}') from None
  apply_overrides(config, overrides or [])
  return config


def load_training_config(spec: str, overrides: list[str] | None = None
                         ) -> ml_collections.ConfigDict:
  """load_config for a command that trains or sizes one run: a plan file
  (configs/ablation.py: arms x seeds of another config) is a one-line error
  naming one of its arms' configs instead."""
  path, _, arg = spec.partition(':')
  module = load_module(path)
  if hasattr(module, 'get_config'):
    try:
      config = module.get_config(arg or None)
    except ValueError as e:
      raise ConfigError(f'{path}: {e}') from None
    if 'arms' in config and 'hardware' not in config:
      arm, preset = config.arms[0][:2]
      raise ConfigError(
          f'{spec} is a plan (launch/sweep.py --plan {spec}), not a run\'s config: give one '
          f'of its arms\' configs, e.g. --config {config.config}:{preset} (arm {arm})')
  return load_config(spec, overrides)


_UNPARSED = object()


def _literal(text: str):
  """A Python literal, or _UNPARSED."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return _UNPARSED


def _parse_value(text: str, current):
  if isinstance(current, str):
    return text
  value = _literal(text)
  if value is _UNPARSED:
    if isinstance(current, bool) and text.lower() in ('true', 'false'):
      return text.lower() == 'true'
    raise ConfigError(f'cannot parse {text!r} as a value like {current!r}')
  if isinstance(current, (tuple, list)) and isinstance(value, (tuple, list)):
    value = type(current)(value)  # a saved config holds lists where presets hold tuples
  if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if current is not None and not isinstance(value, type(current)):
    raise ConfigError(f'expected a {type(current).__name__} like {current!r}, '
                      f'got {text!r}')
  return value


# Free-form name -> weight mappings (training sources, task loss weights):
# their entries are names, not schema fields, so an override may replace the
# whole mapping ("{'ct_folder': 1.0}") or add an entry (`sources.ct_folder=1`).
OPEN_MAPPINGS = ('data.sources', 'loss.weights')


def _weight(value, key: str, text: str) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ConfigError(f'--config.{key}: expected a number (a weight), got {text!r}')
  return float(value)


def _parse_mapping(text: str, key: str) -> ml_collections.ConfigDict:
  value = _literal(text)
  if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
    raise ConfigError(f'--config.{key}: expected a mapping of names to weights like '
                      f"\"{{'name': 1.0}}\", got {text!r}")
  return ml_collections.ConfigDict(
      {name: _weight(w, f'{key}.{name}', repr(w)) for name, w in value.items()})


def apply_overrides(config, overrides: list[str]):
  """Apply 'a.b=value' strings (a leading '--config.' is optional)."""
  for item in overrides:
    key, sep, text = item.removeprefix('--').removeprefix('config.').partition('=')
    if not sep:
      raise ConfigError(f'override {item!r} must look like --config.KEY=VALUE')
    parent, _, leaf = key.rpartition('.')
    if key in OPEN_MAPPINGS:  # the whole mapping
      dotted_paths.get(config, parent)[leaf] = _parse_mapping(text, key)
      continue
    if parent in OPEN_MAPPINGS:  # one entry of it
      dotted_paths.get(config, parent)[leaf] = _weight(_literal(text), key, text)
      continue
    node = dotted_paths.get(config, parent) if parent else config
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
      valid = ', '.join(dotted_paths.keys(config))
      raise ConfigError(f'unknown config key {key!r}; valid keys: {valid}')
    try:
      node[leaf] = _parse_value(text, node[leaf])
    except ConfigError as e:
      raise ConfigError(f'--config.{key}: {e}') from None


def to_json(config) -> str:
  """The config as the JSON a workdir records (sorted keys, tuples as lists)."""
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)


# Fields added to the config after checkpoints were first written, each with
# the value that reproduces what a checkpoint from before it did (not today's
# default, which may differ). A saved config lacking one gets it from here;
# a saved config lacking any other field is refused.
LEGACY_DEFAULTS = {
    'data.input_kind': 'hu',                    # f24a569: 8-bit renderings
    'data.standardize': 'none',                 # 8e2b72a: intensity standardisation
    'data.standardize_reference': (0.5, 0.27),  # 8e2b72a
    'data.balance_classes': False,              # 8e2b72a: within-source balancing
    'data.lung_crop': False,                    # 23ceb5f: lung crop
    'loss.pseudo_weight': 0.0,                  # pseudo-label soft masks
    'loss.pseudo_confidence': (0.3, 0.7),
    'loss.normal_no_lesion_weight': 0.0,        # normal slices as lesion-free
    'init_from': '',                            # fine-tuning from another run
    'train.pretrain_steps': 0,                  # a pre-training stage in the run
    'data.pseudo_labels': '',                   # self-training label sets
    'loss.recon_mask_ratio': 0.0,               # masked-patch in-painting
    'loss.recon_mask_patch': 16,
    'data.train_size_schedule': (),             # progressive resizing
    'hardware.name': '',                        # mtl-jax plan's target machine
    'hardware.devices': 0,
    'hardware.peak_tflops': 0.0,
    'hardware.memory_gb': 0.0,
    'hardware.interconnect_gb_s': 0.0,
}
# Renamed fields: old name -> (new name, conversion of the old value).
RENAMED = {'data.eval_source': ('data.eval_sources', lambda name: (name,))}


def from_dict(data: dict, where: str = 'saved config') -> ml_collections.ConfigDict:
  """A config saved in a checkpoint, as the code of today reads it.

  Fields the checkpoint predates get their `LEGACY_DEFAULTS` value (logged,
  and listed in the config's `legacy_fields`); renamed fields are converted.
  Any other field missing is a one-line ConfigError: a saved config is never
  silently completed from today's schema (`mtl_jax/config/schema.py`).
  """
  data = json.loads(json.dumps(data))  # a deep copy
  filled = []
  for old, (new, convert) in RENAMED.items():
    if dotted_paths.has(data, old) and not dotted_paths.has(data, new):
      dotted_paths.put(data, new, convert(dotted_paths.pop(data, old)))
      filled.append(f'{old} -> {new}')
  for key, value in LEGACY_DEFAULTS.items():
    if not dotted_paths.has(data, key):
      dotted_paths.put(data, key, value)
      filled.append(key)
  from mtl_jax.config import schema  # pylint: disable=g-import-not-at-top  (schema imports data modules)
  missing = [key for key in dotted_paths.keys(schema.get_config())
             if not dotted_paths.has(data, key) and not _is_open_dict(key)]
  if missing:
    raise ConfigError(f'{where} lacks {", ".join(missing)}, which this mtl-jax needs and '
                      'has no recorded old value for (mtl_jax/config/loader.py LEGACY_DEFAULTS); '
                      'it was written by another mtl-jax version')
  if filled:
    logging.info('%s predates %s: filled with the values from before they existed',
                 where, ', '.join(filled))
  config = ml_collections.ConfigDict(data)
  config.legacy_fields = tuple(filled)
  return config


def _is_open_dict(key: str) -> bool:
  """Entries of free-form mappings (sources, task weights) are not schema fields."""
  return key.startswith(tuple(f'{m}.' for m in OPEN_MAPPINGS) + ('data.eval_sources.',))


def differences(saved: dict, expected: dict, ignored: tuple = ()) -> list[str]:
  """Fields where a run's saved config (config.json) differs from `expected`:
  the whole config, so that a changed preset default (not only an override)
  is caught. Fields the run predates count with the value that reproduces it
  (`LEGACY_DEFAULTS`); `hardware.*` only sizes jobs; `ignored` holds more
  field names or prefixes (ending in '.')."""
  try:
    saved = from_dict(saved).to_dict()
  except ConfigError:
    return ['config.json (not a config of this mtl-jax)']
  ignored = ('hardware.', 'legacy_fields') + tuple(ignored)
  saved, expected = _flat(saved), _flat(expected)
  return sorted(k for k in set(saved) | set(expected)
                if not k.startswith(ignored) and saved.get(k) != expected.get(k))


def _flat(tree: dict) -> dict:
  """{'a.b': value} of a nested dict, values as config.json holds them."""
  return {key: json.loads(json.dumps(value, default=list))
          for key, value in dotted_paths.flatten(tree).items()}
