"""The model card of an exported model: what it was trained on, how good it is, its limits.

Written by `mtl-jax export-model` from the checkpoint's own record (config,
preprocessing, step) and the validation figures measured on the exported
weights, so that no figure in it is typed by hand. Each training source's
description and licence come from its builder (`SOURCE`, `LICENCE`).
`essentials` is the part a report carries.
"""

from __future__ import annotations

import importlib

RESEARCH_ONLY = 'Research use only: not a medical device, not for diagnosis.'

# What no figure shows: the limits of every model trained on these sources.
LIMITS = (
    'Trained on 8-bit renderings of CT (screenshots, crops, each source with its own '
    'window), never on Hounsfield-unit volumes: a HU scan is rendered through a lung '
    'window it has not seen as such, and its figures are less reliable than those below.',
    'The validation splits are small (e.g. 10 MedSeg slices for Dice): read the 95% '
    'intervals, not the point values.',
    'Slices carry study labels (a COVID-19 study\'s every slice is "COVID-19"), and the '
    'sources differ in look: a class can be learnt from the source, which the '
    'within-source AUCs below guard against only in part.',
    'Sources it has never seen (other scanners, hospitals, children, other diseases) are '
    'flagged by the out-of-distribution check only when they look unlike all of its '
    'training sources.',
)


def _source(name: str) -> tuple[str, str]:
  try:
    builder = importlib.import_module(f'mtl_jax.tfds_builders.{name}').Builder
  except ImportError:
    return 'not a builder of this mtl-jax', 'unknown'
  return getattr(builder, 'SOURCE', name), getattr(builder, 'LICENCE', 'unknown')


def _figure(results: dict, key: str) -> str:
  value = results.get(key)
  if value is None:
    return 'not measured'
  ci = results.get(f'{key}_ci95')
  return f'{value:.3f}' + (f' [{ci[0]:.3f}, {ci[1]:.3f}]' if ci else '')


def validation_figures(results: dict) -> dict:
  """{figure name: 'value [CI]'}: pooled Dice, accuracy, COVID AUC, and
  each source's COVID-vs-rest AUC where that source has both classes."""
  figures = {'Dice (pooled)': _figure(results, 'dice'),
             'accuracy (pooled)': _figure(results, 'accuracy'),
             'COVID-19 AUC (pooled)': _figure(results, 'auc_covid')}
  for source, per in sorted((results.get('by_source') or {}).items()):
    if per.get('auc_covid') is not None:
      figures[f'COVID-19 AUC, {source}'] = _figure(per, 'auc_covid')
    if per.get('dice') is not None:
      figures[f'Dice, {source}'] = _figure(per, 'dice')
  return figures


def essentials(meta: dict, results: dict | None) -> dict:
  """What a report carries of the card: recipe, data, figures, use."""
  config = meta['config']
  return {'use': RESEARCH_ONLY, 'recipe': config.get('preset'),
          'training_data': sorted(config['data']['sources']),
          'validation': validation_figures(results) if results else 'not recorded'}


def write(meta: dict, results: dict | None, size_mb: float) -> str:
  """The card as Markdown."""
  config, export = meta['config'], meta.get('export', {})
  standardize = meta.get('preprocessing', {}).get('standardize', config['data']['standardize'])
  if isinstance(standardize, dict):
    standardize = standardize.get('mode')
  costs = export.get('float32_differences') or {}
  lines = [f'# mtl-jax model card: `{config.get("preset")}`', '', f'**{RESEARCH_ONLY}**', '',
           '## What it is', '',
           f'One network (tasks: {", ".join(meta.get("tasks", []))}) trained by `mtl-jax '
           f'train` with the preset `{config.get("preset")}` for '
           f'{config["train"]["num_train_steps"]} steps (seed {config.get("seed")}), '
           f'exported from its {export.get("which", "?")} checkpoint (step '
           f'{export.get("step", "?")}), parameters and batch statistics stored as '
           f'{export.get("dtype", "?")} ({size_mb:.1f} MB). Input: one slice at '
           f'{config["data"]["image_size"]} px, {config["data"]["input_kind"]} input, '
           f'intensity standardisation `{standardize}`; `mtl-jax predict` replays the '
           'recorded preprocessing on any study.', '',
           '## Training data', '', '| source | sampling weight | what | licence |',
           '|---|---|---|---|']
  for name, weight in sorted(config['data']['sources'].items()):
    what, licence = _source(name)
    lines.append(f'| `{name}` | {weight:g} | {what} | {licence} |')
  lines += ['', '## Validation', '',
            'Measured by `mtl-jax evaluate` on the exported weights themselves, on each '
            "source's validation split (95% bootstrap intervals):", '',
            '| figure | value [95% CI] |', '|---|---|']
  if results:
    lines += [f'| {k} | {v} |' for k, v in validation_figures(results).items()]
  else:
    lines.append('| (not recorded) | |')
  if costs:
    lines += ['', f'The {export.get("dtype")} weights minus the float32 checkpoint, on the '
              'same validation splits: ' + ', '.join(
                  f'{k} {v:+.4f}' for k, v in costs.items() if v is not None) + '.']
  lines += ['', '## Known limits', ''] + [f'- {limit}' for limit in LIMITS]
  return '\n'.join(lines) + '\n'
