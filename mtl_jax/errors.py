"""The mistakes a user can fix, as one family of exceptions.

Everything raised for a bad input file, a bad config, a dataset that is not
built or a checkpoint that does not fit derives from `UserError`. The CLI
prints a `UserError` as one line (exit 2) and nothing else: any other
exception is a bug in mtl-jax and keeps its traceback (exit 1), so a bug's
`KeyError` is never mistaken for a user's typo.

This module imports nothing from the project: every layer may raise these.
"""

from __future__ import annotations


class UserError(Exception):
  """A mistake the user can fix, said in one line that names what is wrong."""


class ConfigError(UserError):
  """A config that cannot be loaded, overridden or used as it is."""


class BadInputError(UserError):
  """An input file (or folder layout) that cannot be used, with the reason.

  `reason` and `path` are kept apart so a dataset builder can collect every
  bad file and report them together (`readers.BadFiles`).
  """

  def __init__(self, reason: str, path=None):
    self.reason, self.path = reason, None if path is None else str(path)
    super().__init__(f'{path}: {reason}' if path is not None else reason)


class InputNotFoundError(BadInputError):
  """A path given on the command line or in a CSV does not exist."""

  def __init__(self, path, what: str = 'input'):
    super().__init__(f'{what} not found', path)


class DatasetNotFoundError(UserError):
  """A dataset that is unknown or has not been built in the data directory."""


class CheckpointError(UserError):
  """A workdir without a usable checkpoint, or one that another model wrote."""


class TrainingDivergedError(UserError):
  """The loss became NaN or inf: stop rather than train on garbage."""


class DistributedError(UserError):
  """A multi-process run that cannot start (flags missing, peers unreachable)."""
