"""What a report says about the model that made it: the model card's
essentials, and the confidence below which a class is no answer.

The confidence threshold (one place, `confidence_threshold`): a study whose
top class probability is under it is "inconclusive". Calibrated at training
time by the best hook `evaluation.confidence_hook` on the validation slices
the checkpoint was selected with (`calibrate`): the lowest top-class
probability t such that the slices whose top probability is >= t are
classified with at least TARGET_ACCURACY accuracy (and at least MIN_SLICES of
them), never below the chance fallback. When no t reaches it, every study is
inconclusive (threshold 1.0). Checkpoints saved before the hook (no
`class_confidence` in their record) use the fallback 1/num_classes +
FALLBACK_MARGIN, named as such in the report.
"""

from __future__ import annotations

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
                'metrics': (selection or {}).get('metrics') or NOT_RECORDED}
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
