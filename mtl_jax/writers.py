"""Metric writers: clu's `MetricWriter` interface, TensorBoard via tensorboardX.

clu 0.0.12's `clu.metric_writers/__init__.py` imports its TensorFlow summary
writer unconditionally, so a plain `from clu import metric_writers` fails
without TensorFlow. We register the package without running that
`__init__` and import only the TF-free modules (interface, logging, multi and
async writers); TensorBoard event files come from tensorboardX, which is
pure Python. Nothing here imports TensorFlow or torch.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types

import numpy as np


def _import_clu_writers():
  name = 'clu.metric_writers'
  if name not in sys.modules:
    spec = importlib.util.find_spec('clu')
    package = types.ModuleType(name)
    package.__path__ = [os.path.join(os.path.dirname(spec.origin),
                                     'metric_writers')]
    sys.modules[name] = package
  from clu.metric_writers import interface, logging_writer, multi_writer  # pylint: disable=g-import-not-at-top
  package = sys.modules[name]
  package.MetricWriter = interface.MetricWriter
  package.LoggingWriter = logging_writer.LoggingWriter
  package.MultiWriter = multi_writer.MultiWriter
  return interface, logging_writer, multi_writer


interface, logging_writer, multi_writer = _import_clu_writers()
from clu import periodic_actions  # noqa: E402  (needs the registration above)

MetricWriter = interface.MetricWriter


class TensorboardXWriter(MetricWriter):
  """Writes TensorBoard event files with tensorboardX (no TensorFlow)."""

  def __init__(self, logdir: str):
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    self._writer = SummaryWriter(logdir=logdir, flush_secs=30)

  def write_summaries(self, step, values, metadata=None):
    del metadata
    for key, value in values.items():
      self._writer.add_scalar(key, float(np.asarray(value)), step)

  def write_scalars(self, step, scalars):
    for key, value in scalars.items():
      self._writer.add_scalar(key, float(np.asarray(value)), step)

  def write_images(self, step, images):
    for key, value in images.items():
      self._writer.add_images(key, np.asarray(value), step, dataformats='NHWC')

  def write_videos(self, step, videos):
    del step, videos  # not used by this project

  def write_audios(self, step, audios, *, sample_rate):
    for key, value in audios.items():
      self._writer.add_audio(key, np.asarray(value), step, sample_rate=sample_rate)

  def write_texts(self, step, texts):
    for key, value in texts.items():
      self._writer.add_text(key, value, step)

  def write_histograms(self, step, arrays, num_buckets=None):
    for key, value in arrays.items():
      self._writer.add_histogram(key, np.asarray(value), step,
                                 max_bins=(num_buckets or {}).get(key))

  def write_hparams(self, hparams):
    self._writer.add_text('hparams', '\n'.join(
        f'{key}: {value}' for key, value in sorted(hparams.items())), 0)

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.close()


def create_writer(logdir: str, just_logging: bool = False) -> MetricWriter:
  """Console logging always; TensorBoard event files on the lead process."""
  writers = [logging_writer.LoggingWriter()]
  if not just_logging:
    writers.append(TensorboardXWriter(logdir))
  return multi_writer.MultiWriter(writers)
