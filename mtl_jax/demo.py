"""`mtl-jax demo`: synthetic CT in, a trained three-task model and a results table out."""

from __future__ import annotations

import logging
import time

from mtl_jax import config_loader, evaluation, train
from tfds_builders import registry

TABLE_ROWS = (
    ('Dice (pooled)', 'dice', 'dice_ci95'),
    ('Dice (mean per image)', 'dice_per_image_mean', None),
    ('IoU (pooled)', 'iou', None),
    ('HD95 (px)', 'hd95', None),
    ('Sensitivity (pixels)', 'sensitivity', None),
    ('Specificity (pixels)', 'specificity', None),
    ('Accuracy (3 classes)', 'accuracy', None),
    ('ROC AUC COVID vs rest', 'auc_covid', 'auc_covid_ci95'),
    ('ROC AUC macro one-vs-rest', 'auc_macro', None),
    ('Reconstruction MSE', 'recon_mse', None),
    ('Reconstruction PSNR (dB)', 'recon_psnr', None),
    ('Examples', 'num_examples', None),
)


def _cell(results: dict, key: str, ci_key: str | None) -> str:
  value = results.get(key)
  if value is None:
    return '-'
  if isinstance(value, int):
    return str(value)
  text = f'{value:.4f}' if abs(value) < 10 else f'{value:.2f}'
  ci = results.get(ci_key) if ci_key else None
  if ci and None not in ci:
    text += f' [{ci[0]:.3f}, {ci[1]:.3f}]'
  return text


def results_table(results_by_split: dict) -> str:
  """A Markdown table, one column per split, 95% bootstrap CIs in brackets."""
  splits = list(results_by_split)
  lines = ['| metric | ' + ' | '.join(splits) + ' |',
           '|---|' + '---|' * len(splits)]
  for label, key, ci_key in TABLE_ROWS:
    if all(results_by_split[s].get(key) is None for s in splits):
      continue
    lines.append(f'| {label} | ' + ' | '.join(
        _cell(results_by_split[s], key, ci_key) for s in splits) + ' |')
  return '\n'.join(lines)


def run_demo(workdir: str, config_spec: str = 'configs/default.py:demo',
             overrides: list[str] | None = None) -> dict:
  """Build the synthetic dataset if missing, train, restore the best, evaluate."""
  start = time.time()
  config = config_loader.load_config(config_spec, overrides)
  for name in config.data.sources:
    registry.build_dataset(name, config.data.data_dir, config.data.image_size)
  train.train_and_evaluate(config, workdir)
  results = {split: evaluation.evaluate_workdir(workdir, split)
             for split in ('validation', 'test')}
  minutes = (time.time() - start) / 60
  logging.info('demo finished in %.1f min', minutes)
  print(f'\nBest checkpoint (by validation {config.train.best_metric}) of '
        f'{workdir}, step {results["validation"]["step"]}; {minutes:.1f} min:\n')
  print(results_table(results))
  return results
