"""Each task owns its loss, its eval outputs and its metrics (scenic-style).

Adding a task means adding one class here and one head in `models.py`; the
train and eval loops only iterate over `make_tasks(config)`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mtl_jax import losses, metrics
from mtl_jax.data.features import CLASS_NAMES

# A pixel is lesion when its sigmoid probability exceeds this (binary
# segmentation; multi-class models take the argmax). Evaluation, predict's
# replay and its report all read it from here.
LESION_THRESHOLD = 0.5


class SegmentationTask:
  """Lesion segmentation: soft Dice (+ optional pixel CE) on examples with masks."""
  name = 'seg'

  def __init__(self, config):
    self.num_seg_classes = config.model.num_seg_classes
    self.ce_weight = config.loss.seg_ce_weight

  def loss(self, outputs, batch):
    weight = batch['has_mask'] * batch['valid']
    terms = {'dice_loss': losses.soft_dice_loss(outputs['seg_logits'],
                                                batch['mask'], weight)}
    total = terms['dice_loss']
    if self.ce_weight:
      terms['seg_ce'] = losses.pixel_cross_entropy(outputs['seg_logits'],
                                                   batch['mask'], weight)
      total = total + self.ce_weight * terms['seg_ce']
    return total, terms

  def predict(self, outputs):
    """Label map (B, H, W) and lesion probability (B, H, W)."""
    logits = outputs['seg_logits'].astype(jnp.float32)
    if self.num_seg_classes == 1:
      prob = jax.nn.sigmoid(logits[..., 0])
      return {'seg_labels': (prob > LESION_THRESHOLD).astype(jnp.int32), 'seg_prob': prob}
    probs = jax.nn.softmax(logits, axis=-1)
    return {'seg_labels': jnp.argmax(probs, axis=-1).astype(jnp.int32),
            'seg_prob': 1.0 - probs[..., 0]}

  def accumulator(self):
    return metrics.SegmentationAccumulator(max(self.num_seg_classes, 1))

  def update(self, acc, predictions, batch):
    valid = (batch['has_mask'] > 0) & (batch['valid'] > 0)
    target = batch['mask'] if self.num_seg_classes > 1 else (batch['mask'] > 0)
    acc.update(predictions['seg_labels'], target.astype(np.int32), valid=valid)


class ReconstructionTask:
  """Slice reconstruction: MSE to the input on every (non-padding) example."""
  name = 'recon'

  def __init__(self, config):
    del config

  def loss(self, outputs, batch):
    mse = losses.reconstruction_mse(outputs['recon'], batch['image'][..., None],
                                    batch['valid'])
    return mse, {'recon_mse': mse}

  def predict(self, outputs):
    return {'recon': outputs['recon'].astype(jnp.float32)}

  def accumulator(self):
    return metrics.ReconstructionAccumulator()

  def update(self, acc, predictions, batch):
    acc.update(predictions['recon'], batch['image'], valid=batch['valid'] > 0)


class ClassificationTask:
  """COVID-19 / normal / other: set-valued cross-entropy on labelled examples."""
  name = 'cls'

  def __init__(self, config):
    self.num_classes = config.model.num_classes

  def loss(self, outputs, batch):
    ce = losses.set_cross_entropy(outputs['cls_logits'], batch['label_set'],
                                  batch['has_label'] * batch['valid'])
    return ce, {'cls_ce': ce}

  def predict(self, outputs):
    return {'cls_probs': jax.nn.softmax(
        outputs['cls_logits'].astype(jnp.float32), axis=-1)}

  def accumulator(self):
    return metrics.ClassificationAccumulator(self.num_classes,
                                             CLASS_NAMES[:self.num_classes])

  def update(self, acc, predictions, batch):
    valid = (batch['has_label'] > 0) & (batch['valid'] > 0)
    label_set = batch['label_set']
    # COVID-vs-rest is known whenever the set is decided about class 0.
    covid_positive = np.where(label_set[:, 0] == 0, 0,
                              np.where(label_set.sum(-1) == 1, 1, -1))
    acc.update(predictions['cls_probs'], batch['label'], valid=valid,
               sources=batch.get('source'), covid_positive=covid_positive)


TASK_CLASSES = {cls.name: cls for cls in
                (SegmentationTask, ReconstructionTask, ClassificationTask)}


def enabled_tasks(config) -> tuple:
  """Names of tasks with a positive loss weight, in a fixed order."""
  return tuple(name for name in ('seg', 'recon', 'cls')
               if config.loss.weights[name] > 0)


def make_tasks(config) -> dict:
  return {name: TASK_CLASSES[name](config) for name in enabled_tasks(config)}


def total_loss(tasks: dict, outputs, batch, config):
  """Combined loss and a flat dict of every term, for logging."""
  task_losses, terms = {}, {}
  for name, task in tasks.items():
    task_losses[name], task_terms = task.loss(outputs, batch)
    terms.update(task_terms)
    terms[f'loss_{name}'] = task_losses[name]
  log_vars = outputs.get('task_log_vars')
  total = losses.combine_task_losses(task_losses, dict(config.loss.weights),
                                     log_vars, tuple(tasks))
  if log_vars is not None:
    for i, name in enumerate(tasks):
      terms[f'weight_{name}'] = jnp.exp(-log_vars[i])
  terms['loss'] = total
  return total, terms
