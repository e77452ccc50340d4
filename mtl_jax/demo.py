"""`mtl-jax demo`: synthetic CT in, a trained three-task model and a results table out."""

from __future__ import annotations

import logging
import time

from mtl_jax import evaluation, metrics_summary, train
from mtl_jax.config import loader

def run_demo(workdir: str, config_spec: str = loader.DEMO_CONFIG,
             overrides: list[str] | None = None) -> dict:
  """Build the synthetic dataset if missing, train, restore the best, evaluate."""
  start = time.time()
  from mtl_jax.tfds_builders import registry  # pylint: disable=g-import-not-at-top  (builds only)
  config = loader.load_config(config_spec, overrides)
  for name in config.data.sources:
    registry.build_dataset(name, config.data.data_dir, config.data.image_size)
  train.train_in_stages(config, workdir)
  results = {split: evaluation.evaluate_workdir(workdir, split)
             for split in ('validation', 'test')}
  minutes = (time.time() - start) / 60
  logging.info('demo finished in %.1f min', minutes)
  print(f'\nBest checkpoint (by validation {config.train.best_metric}) of '
        f'{workdir}, step {results["validation"]["step"]}; {minutes:.1f} min:\n')
  print(metrics_summary.results_table(results))
  return results
