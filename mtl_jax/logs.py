"""A console for people, a log file for libraries.

The console (stderr) shows mtl-jax's own messages (builders' too), the metric lines (clu's
logging writer) and any library ERROR. Everything else at INFO and above —
orbax's dozens of lines per save and close, absl warnings, TFDS chatter —
goes only to `WORKDIR/mtl-jax.log` when a command has a workdir. The log
never creates the workdir itself, so a command that fails before it starts
leaves none behind.
"""

from __future__ import annotations

import logging
import os

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
_BUILDERS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         'tfds_builders') + os.sep
# clu's LoggingWriter prints the metric lines through absl; absl reports the
# caller's file, so the record's pathname is the writer's.
_CONSOLE_LIBRARY_FILES = (f'clu{os.sep}metric_writers{os.sep}logging_writer.py',)
LOG_FILE = 'mtl-jax.log'
_FORMAT = '%(asctime)s %(message)s'


class _ForPeople(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    path = record.pathname or ''
    return (record.levelno >= logging.ERROR or path.startswith((_PACKAGE, _BUILDERS))
            or path.endswith(_CONSOLE_LIBRARY_FILES))


class _WorkdirFileHandler(logging.FileHandler):
  """A FileHandler that holds records back until its folder exists.

  Commands create their workdir only once their inputs are checked; until
  then records wait in memory (a bounded number), so a failed start leaves
  no folder behind.
  """
  MAX_HELD = 10_000

  def __init__(self, path: str):
    super().__init__(path, delay=True)
    self._held = []

  def emit(self, record):
    if self.stream is None and not os.path.isdir(os.path.dirname(self.baseFilename)):
      if len(self._held) < self.MAX_HELD:
        self._held.append(record)
      return
    held, self._held = self._held, []
    for old in held:
      super().emit(old)
    super().emit(record)


def setup_console():
  """Root logger at INFO; the console handler keeps only what a person reads."""
  root = logging.getLogger()
  root.setLevel(logging.INFO)
  for handler in list(root.handlers):
    if getattr(handler, '_mtl_jax', False):
      root.removeHandler(handler)
  console = logging.StreamHandler()
  console.setFormatter(logging.Formatter(_FORMAT, datefmt='%H:%M:%S'))
  console.addFilter(_ForPeople())
  console._mtl_jax = True  # pylint: disable=protected-access
  root.addHandler(console)
  try:  # absl would otherwise add its own stderr handler at first use
    from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
    absl_logging.use_python_logging(quiet=True)
    absl_logging.set_verbosity(absl_logging.INFO)
  except ImportError:
    pass


def log_to_file(workdir: str) -> str:
  """Also write every INFO+ record, libraries' included, to WORKDIR/mtl-jax.log."""
  path = os.path.abspath(os.path.join(workdir, LOG_FILE))
  root = logging.getLogger()
  for handler in list(root.handlers):
    if getattr(handler, '_mtl_jax_file', False):
      root.removeHandler(handler)
      handler.close()
  handler = _WorkdirFileHandler(path)
  handler.setFormatter(logging.Formatter(
      '%(asctime)s %(levelname).1s %(name)s %(filename)s:%(lineno)d] %(message)s'))
  handler._mtl_jax_file = True  # pylint: disable=protected-access
  root.addHandler(handler)
  return path
