"""The model card: what the model that made a report is, how good, and when
its class is no answer.

Three parts, one module because they describe one thing:
- `card`, report.json's `model` block: the card's essentials (training data,
  recipe, validation figures, intended use) from the checkpoint's record.
- `write`, MODEL_CARD.md of an exported model (`mtl-jax export-model`): the
  same record as a page, with each training source's description and licence
  from its builder (`SOURCE`, `LICENCE`) and the validation figures measured
  on the exported weights, so that no figure in it is typed by hand.
- The confidence threshold (one place, `confidence_threshold`): a study whose
  top class probability is under it is "inconclusive". Calibrated at training
  time by the best hook `evaluation.confidence_hook` on the validation slices
  the checkpoint was selected with (`calibrate`): the lowest top-class
  probability t such that the slices whose top probability is >= t are
  classified with at least TARGET_ACCURACY accuracy (and at least MIN_SLICES
  of them), never below the chance fallback. When no t reaches it, every
  study is inconclusive (threshold 1.0). Checkpoints saved before the hook
  (no `class_confidence` in their record) use the fallback 1/num_classes +
  FALLBACK_MARGIN, named as such in the report.
"""

from __future__ import annotations

import importlib
import json
import os

import numpy as np

INTENDED_USE = ('research use only: not a medical device, not validated for clinical '
                'decisions; figures are model estimates')
TARGET_ACCURACY = 0.80
MIN_SLICES = 20
FALLBACK_MARGIN = 0.15
NOT_RECORDED = 'not recorded'


def fallback(num_classes: int) -> dict:
  value = 1.0 / num_classes + FALLBACK_MARGIN
  return {'value': float(value), 'source': 'fallback',
          'rule': f'1/num_classes + {FALLBACK_MARGIN:.2f} (chance plus a margin): the '
                  'checkpoint records no validation calibration (saved before it)'}


def calibrate(probs, labels, num_classes: int) -> dict:
  """The threshold from validation slices' class probabilities and labels
  (labels < 0: not an exact class, skipped). JSON-able, for the checkpoint."""
  probs, labels = np.asarray(probs, np.float64), np.asarray(labels).reshape(-1)
  keep = labels >= 0
  probs, labels = probs[keep], labels[keep]
  floor = fallback(num_classes)['value']
  rule = (f'lowest top-class probability t at which validation slices with top '
          f'probability >= t reach {TARGET_ACCURACY:.0%} accuracy (at least '
          f'{MIN_SLICES} slices), and at least 1/num_classes + {FALLBACK_MARGIN:.2f}')
  out = {'rule': rule, 'split': 'validation', 'num_slices': int(len(labels)),
         'target_accuracy': TARGET_ACCURACY, 'value': 1.0, 'reached': False}
  if len(labels) < MIN_SLICES:
    return dict(out, value=None, note=f'fewer than {MIN_SLICES} labelled validation slices')
  top = probs.max(axis=1)
  order = np.argsort(-top, kind='stable')
  correct = (probs.argmax(axis=1) == labels)[order]
  accuracy = np.cumsum(correct) / np.arange(1, len(correct) + 1)
  ok = np.flatnonzero((accuracy >= TARGET_ACCURACY) & (np.arange(len(correct)) + 1 >= MIN_SLICES))
  if ok.size:
    out.update(value=float(max(top[order][ok[-1]], floor)), reached=True)
  return out


def confidence_threshold(meta: dict, num_classes: int) -> dict:
  """{value, rule, source} of the threshold `report.build` applies."""
  recorded = meta.get('class_confidence')
  if not recorded or recorded.get('value') is None:
    return fallback(num_classes)
  return {'value': float(recorded['value']), 'source': 'validation', 'rule': recorded['rule'],
          'reached': recorded.get('reached'), 'num_slices': recorded.get('num_slices')}


def _numbers(results: dict) -> dict:
  return {k: v for k, v in sorted(results.items())
          if isinstance(v, (int, float)) and not isinstance(v, bool)}


def card(meta: dict, path: str, workdir: str) -> dict:
  """report.json's `model`: training data, recipe, validation figures and the
  intended use, from the checkpoint's record and the run's eval_validation.json
  ('not recorded' where neither has them)."""
  config = meta.get('config') or {}
  data, train, optim = (config.get(k) or {} for k in ('data', 'train', 'optim'))
  model = config.get('model') or {}
  selection = meta.get('selection')
  validation = {'selection': selection or NOT_RECORDED,
                'metrics': (meta.get('validation') or {}).get('metrics') or NOT_RECORDED}
  evaluated = os.path.join(workdir, 'eval_validation.json')
  if os.path.exists(evaluated):
    try:
      with open(evaluated) as f:
        results = json.load(f)
    except (OSError, ValueError):
      results = None
    if results:
      validation['eval_validation'] = {'file': evaluated, 'step': results.get('step'),
                                       'metrics': _numbers(results)}
  if not selection and 'eval_validation' not in validation:
    validation = NOT_RECORDED
  return {
      'intended_use': INTENDED_USE,
      'training_data': {'sources': dict(data.get('sources') or {}) or NOT_RECORDED,
                        'eval_sources': list(data.get('eval_sources') or []) or NOT_RECORDED,
                        'data_dir': data.get('data_dir', NOT_RECORDED)},
      'recipe': {'steps': train.get('num_train_steps', NOT_RECORDED),
                 'global_batch_size': train.get('global_batch_size', NOT_RECORDED),
                 'learning_rate': optim.get('learning_rate', NOT_RECORDED),
                 'image_size': data.get('image_size', NOT_RECORDED),
                 'model': {k: model[k] for k in sorted(model)
                           if isinstance(model[k], (str, int, float, bool))} or NOT_RECORDED,
                 'tasks': meta.get('tasks', NOT_RECORDED)},
      'validation': validation,
      'checkpoint': os.path.abspath(path)}


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


def write(meta: dict, results: dict | None, size_mb: float) -> str:
  """The card as Markdown."""
  config, export = meta['config'], meta.get('export', {})
  standardize = meta.get('preprocessing', {}).get('standardize', config['data']['standardize'])
  if isinstance(standardize, dict):
    standardize = standardize.get('mode')
  costs = export.get('float32_differences') or {}
  lines = [f'# mtl-jax model card: `{config.get("preset")}`', '', f'**{INTENDED_USE[0].upper() + INTENDED_USE[1:]}.**', '',
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
