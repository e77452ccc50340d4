"""Is the accelerator a run asks for installed? One line saying what to install if not.

A run asks for a platform in two ways: `JAX_PLATFORMS` (e.g. `cuda`, `tpu`),
or, with `JAX_PLATFORMS` unset, a config whose `hardware` section names a GPU
or TPU machine (configs/gpu8.py, configs/tpu.py; `hardware.platform` when a
config sets it, else read from `hardware.name`). A missing backend is the
user's to fix (install the matching lock, see the Makefile's ACCEL), so it is
a `UserError`, not the AssertionError jax raises for an unknown platform.
`JAX_PLATFORMS=cpu` runs a GPU or TPU config on the CPU anyway.
"""

from __future__ import annotations

import importlib.util
import os

from mtl_jax.errors import UserError

# The modules each platform's pip packages install, and how to install them.
_PLUGINS = {'cuda': ('jax_cuda12_plugin', 'jax_cuda13_plugin'), 'tpu': ('libtpu',)}
_INSTALL = {
    'cuda': '`make setup ACCEL=cuda12` (or ACCEL=cuda13 with an NVIDIA driver >= 580)',
    'tpu': '`make setup ACCEL=tpu` on the TPU VM (launch/tpu_vm.sh does it)',
}
_NAMES = {'cuda': 'an NVIDIA GPU (CUDA)', 'tpu': 'a TPU'}
_ALIASES = {'gpu': 'cuda', 'cuda': 'cuda', 'tpu': 'tpu'}


class MissingBackendError(UserError):
  """A platform was asked for that this install or machine does not have."""


def requested_platforms() -> list[str]:
  """`JAX_PLATFORMS` as a list, e.g. ['cuda'] ([] when unset: jax picks)."""
  return [p.strip().lower() for p in os.environ.get('JAX_PLATFORMS', '').split(',')
          if p.strip()]


def config_platform(config) -> str:
  """'cuda', 'tpu' or '' (any): the platform a config's hardware section targets."""
  hardware = config.get('hardware') if config is not None else None
  if not hardware:
    return ''
  explicit = str(hardware.get('platform', '') or '').lower()
  if explicit:
    return _ALIASES.get(explicit, explicit if explicit != 'cpu' else '')
  name = str(hardware.get('name', '') or '').lower()
  if 'tpu' in name:
    return 'tpu'
  if 'gpu' in name or 'nvidia' in name:
    return 'cuda'
  return ''


def require(config=None) -> None:
  """Raise `MissingBackendError` unless the platform asked for can start.

  Call it where a command first needs devices (after `jax.distributed`
  starts, since it initializes jax's backends).
  """
  requested = requested_platforms()
  setting = f'JAX_PLATFORMS={os.environ.get("JAX_PLATFORMS", "")}'
  for platform in requested:
    platform = _ALIASES.get(platform, platform)
    if platform in _PLUGINS and not _installed(platform):
      raise MissingBackendError(
          f'{setting} asks for {_NAMES[platform]}, but this install has no '
          f'{platform.upper()} backend ({" or ".join(_packages(platform))} is not '
          f'installed): install it with {_INSTALL[platform]}, or unset JAX_PLATFORMS')
  import jax  # pylint: disable=g-import-not-at-top
  try:
    found = jax.default_backend()
  except RuntimeError as e:  # jax's own: the plugin is there, a device or driver is not
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise MissingBackendError(f'{setting}: jax could not start it: {reason}') from e
  wanted = '' if requested else config_platform(config)
  if wanted in _PLUGINS and _ALIASES.get(found, found) != wanted:
    target = f'the config targets {config.hardware.name or _NAMES[wanted]}'
    anyway = f'or set JAX_PLATFORMS={found} to run it on {found} anyway'
    if _installed(wanted):
      raise MissingBackendError(
          f'{target}, but jax found no {wanted.upper()} device here, only {found} (the '
          f'backend is installed: is this the right machine, is its driver working?); '
          f'{anyway}')
    raise MissingBackendError(
        f'{target}, but this install has no {wanted.upper()} backend, only {found}: '
        f'install it with {_INSTALL[wanted]}, {anyway}')


def _installed(platform: str) -> bool:
  return any(importlib.util.find_spec(m) for m in _PLUGINS[platform])


def _packages(platform: str) -> list[str]:
  return [m.replace('_', '-') for m in _PLUGINS[platform]]
