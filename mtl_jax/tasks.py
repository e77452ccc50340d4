"""Each task owns its head, its loss, its eval outputs and its metrics (scenic-style).

A task is a `Task` subclass plus one `register` line. The model builds the
shared encoder and calls each enabled task's `head`; training sums the
tasks' `loss`; evaluation pools each task's `update`s in its `accumulator`
and reports its `summarize`; prediction averages the outputs each task names
in `averaged` over test-time flips (`flip_back` first for its `spatial` ones)
and ensemble members (`average`), then asks the task for what follows from
the averages (`from_averaged`: label maps). A task is enabled by a positive
`config.loss.weights[NAME]`. Nothing else changes to add one
(tests/test_tasks.py adds a toy fourth task, trained, evaluated and
predicted with TTA and an ensemble, in the test file alone).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mtl_jax import losses, metrics, metrics_summary, models
from mtl_jax.data.features import CLASS_NAMES, covid_vs_rest, is_normal
from mtl_jax.errors import ConfigError
from mtl_jax.lesion_threshold import LESION_THRESHOLD, ThresholdSweepAccumulator


# Registration order is the order of model outputs, loss terms and learned
# task weights (uncertainty weighting indexes them), so it never changes.
TASK_CLASSES: dict = {}


def register(cls):
  """Make a Task subclass available under `cls.name` (a class decorator)."""
  TASK_CLASSES[cls.name] = cls
  return cls


class Task:
  """The interface every task implements; see the module doc."""
  name: str = ''
  # Prediction keys that are probabilities (or other means): test-time flips
  # and ensemble members average them. The `spatial` ones are maps (B, H, W
  # [, C]), flipped back left-right before they are averaged.
  averaged: tuple = ()
  spatial: tuple = ()

  def __init__(self, config):
    self.config = config

  def head(self, model, bottom, skips, train: bool) -> dict:
    """Build and apply this task's head inside `model` (a MultiTaskUNet):
    `bottom` is the bottleneck, `skips` the encoder features, finest first."""
    raise NotImplementedError

  def loss(self, outputs, batch) -> tuple:
    """(scalar loss, {term name: value}) over the batch's usable examples."""
    raise NotImplementedError

  def predict(self, outputs) -> dict:
    """Eval outputs (probabilities, label maps) from the model's raw outputs."""
    raise NotImplementedError

  def extras(self, outputs, images) -> dict:
    """What `mtl-jax predict` reports beyond the eval outputs (per-slice
    figures, per-class maps); none by default."""
    del outputs, images
    return {}

  def from_averaged(self, predictions) -> dict:
    """Outputs that follow from averaged ones (a label map from averaged
    probabilities), after test-time flips or an ensemble; none by default."""
    del predictions
    return {}

  def train_inputs(self, images, rng):
    """The training input this task asks for (B, H, W); as is by default.

    Targets stay the clean batch: a task that corrupts the input (masked-patch
    in-painting) learns to undo the corruption.
    """
    del rng
    return images

  def accumulator(self):
    """A fresh host-side accumulator of this task's evaluation statistics."""
    raise NotImplementedError

  def update(self, acc, predictions, batch):
    """Pool one host batch of predictions into `acc`."""
    raise NotImplementedError

  def summarize(self, acc, bootstrap: bool = True,
                num_resamples: int = metrics_summary.NUM_RESAMPLES) -> tuple:
    """(results dict, number of examples scored)."""
    raise NotImplementedError


@register
class SegmentationTask(Task):
  """Lesion segmentation: soft Dice (+ optional pixel CE) on examples with masks."""
  name = 'seg'
  averaged = spatial = ('seg_prob', 'seg_class_probs')

  def __init__(self, config):
    super().__init__(config)
    self.num_seg_classes = config.model.num_seg_classes
    self.ce_weight = config.loss.seg_ce_weight
    # Weak targets: model-made soft masks (`soft_mask`), their own weight.
    self.pseudo_weight = float(config.loss.pseudo_weight)
    self.pseudo_confidence = tuple(float(v) for v in config.loss.pseudo_confidence)
    # Negatives: slices labelled normal (and without a mask) are lesion-free.
    self.normal_weight = float(config.loss.normal_no_lesion_weight)
    if len(self.pseudo_confidence) != 2 or not (
        0.0 <= self.pseudo_confidence[0] <= self.pseudo_confidence[1] <= 1.0):
      raise ConfigError(f'loss.pseudo_confidence={list(config.loss.pseudo_confidence)}: '
                        'give (low, high) with 0 <= low <= high <= 1')

  def head(self, model, bottom, skips, train):
    decoder = models.Decoder(model.widths, self.num_seg_classes, True, model.norm,
                             model.dtype, name='seg_decoder')
    return {'seg_logits': decoder(bottom, skips, train)}

  def loss(self, outputs, batch):
    weight = batch['has_mask'] * batch['valid']
    terms = {'dice_loss': losses.soft_dice_loss(outputs['seg_logits'],
                                                batch['mask'], weight)}
    total = terms['dice_loss']
    if self.ce_weight:
      terms['seg_ce'] = losses.pixel_cross_entropy(outputs['seg_logits'],
                                                   batch['mask'], weight)
      total = total + self.ce_weight * terms['seg_ce']
    # A slice labelled normal is lesion-free whatever a teacher's soft mask says.
    normal = (is_normal(batch['label_set']) * batch['has_label'] * batch['valid']
              * (1.0 - batch['has_mask'])) if self.normal_weight else 0.0
    if self.pseudo_weight:
      terms['pseudo_loss'] = losses.pseudo_label_loss(
          outputs['seg_logits'], batch['soft_mask'],
          batch['has_soft_mask'] * batch['valid'] * (1.0 - batch['has_mask'])
          * (1.0 - normal), self.pseudo_confidence)
      total = total + self.pseudo_weight * terms['pseudo_loss']
    if self.normal_weight:
      terms['normal_ce'] = losses.pixel_cross_entropy(
          outputs['seg_logits'], jnp.zeros_like(batch['mask']), normal)
      total = total + self.normal_weight * terms['normal_ce']
    return total, terms

  def predict(self, outputs):
    """Label map (B, H, W) and lesion probability (B, H, W)."""
    logits = outputs['seg_logits'].astype(jnp.float32)
    if self.num_seg_classes == 1:
      prob = jax.nn.sigmoid(logits[..., 0])
      return {'seg_labels': self.labels(prob), 'seg_prob': prob}
    probs = jax.nn.softmax(logits, axis=-1)
    return {'seg_labels': self.labels(probs), 'seg_prob': 1.0 - probs[..., 0]}

  @property
  def multi_class(self) -> bool:
    """GGO and consolidation apart (a label per class), not one lesion map."""
    return self.num_seg_classes > 1

  @property
  def probability_key(self) -> str:
    """The probabilities a study's mask is made from: per class (B, H, W, C)
    for a multi-class model, else the lesion probability (B, H, W)."""
    return 'seg_class_probs' if self.multi_class else 'seg_prob'

  def extras(self, outputs, images):
    del images
    if not self.multi_class:
      return {}
    return {'seg_class_probs': jax.nn.softmax(
        outputs['seg_logits'].astype(jnp.float32), axis=-1)}

  def from_averaged(self, predictions):
    return {'seg_labels': self.labels(predictions[self.probability_key])}

  def labels(self, probs):
    """The label map of lesion probabilities (B, H, W), or of per-class
    probabilities (B, H, W, C) for a multi-class model."""
    if self.num_seg_classes == 1:
      return (probs > LESION_THRESHOLD).astype(jnp.int32)
    return jnp.argmax(probs, axis=-1).astype(jnp.int32)

  def accumulator(self):
    if self.num_seg_classes == 1:  # also Dice and normal area at other thresholds
      return ThresholdSweepAccumulator()
    return metrics.SegmentationAccumulator(self.num_seg_classes)

  def update(self, acc, predictions, batch):
    valid = (batch['has_mask'] > 0) & (batch['valid'] > 0)
    target = batch['mask'] if self.num_seg_classes > 1 else (batch['mask'] > 0)
    acc.update(predictions['seg_labels'], target.astype(np.int32), valid=valid)
    sweep = isinstance(acc, ThresholdSweepAccumulator) and 'seg_prob' in predictions
    if sweep and valid.any():
      acc.update_sweep(np.asarray(predictions['seg_prob'])[valid], np.asarray(target)[valid])
    if 'label_set' in batch:  # false lesions where the label says none can be
      normal = ((batch['valid'] > 0) & (batch['has_label'] > 0) & (batch['has_mask'] == 0)
                & is_normal(np.asarray(batch['label_set'])))
      acc.update_normal(predictions['seg_labels'], valid=normal)
      if sweep and normal.any():
        acc.update_normal_sweep(np.asarray(predictions['seg_prob'])[normal])

  def summarize(self, acc, bootstrap=True, num_resamples=metrics_summary.NUM_RESAMPLES):
    return metrics_summary.segmentation_summary(acc, bootstrap, num_resamples)


@register
class ReconstructionTask(Task):
  """Slice reconstruction: MSE to the input on every (non-padding) example.

  Its decoder has no skip connections, so the bottleneck must carry the image.
  """
  name = 'recon'

  def head(self, model, bottom, skips, train):
    decoder = models.Decoder(model.widths, 1, False, model.norm, model.dtype,
                             name='recon_decoder')
    return {'recon': decoder(bottom, skips, train)}

  def __init__(self, config):
    super().__init__(config)
    # Masked-patch in-painting (self-supervised pre-training): this fraction of
    # square patches is blanked in the training input; the target stays the
    # whole clean slice. 0: the paper's plain reconstruction.
    self.mask_ratio = float(config.loss.recon_mask_ratio)
    self.mask_patch = int(config.loss.recon_mask_patch)
    if not 0.0 <= self.mask_ratio < 1.0 or self.mask_patch < 1:
      raise ConfigError(f'loss.recon_mask_ratio={self.mask_ratio} must be in [0, 1) and '
                        f'loss.recon_mask_patch={self.mask_patch} at least 1')
    others = [n for n, w in config.loss.weights.items() if n != self.name and w]
    if self.mask_ratio and others:
      raise ConfigError(f'loss.recon_mask_ratio={self.mask_ratio} blanks the input of every '
                        f'task, and {", ".join(others)} would learn from it: in-paint in a '
                        'pretrain stage (preset pretrain), then fine-tune with init_from')

  def loss(self, outputs, batch):
    mse = losses.reconstruction_mse(outputs['recon'], batch['image'][..., None],
                                    batch['valid'])
    return mse, {'recon_mse': mse}

  def train_inputs(self, images, rng):
    if not self.mask_ratio:
      return images
    return losses.mask_patches(images, rng, self.mask_ratio, self.mask_patch)

  def predict(self, outputs):
    return {'recon': outputs['recon'].astype(jnp.float32)}

  def extras(self, outputs, images):
    """Each slice's reconstruction error (the older out-of-distribution score)."""
    recon = outputs['recon'].astype(jnp.float32)[..., 0]
    return {'recon_mse': jnp.mean((recon - images) ** 2, axis=(1, 2))}

  def accumulator(self):
    return metrics.ReconstructionAccumulator()

  def update(self, acc, predictions, batch):
    acc.update(predictions['recon'], batch['image'], valid=batch['valid'] > 0)

  def summarize(self, acc, bootstrap=True, num_resamples=metrics_summary.NUM_RESAMPLES):
    return metrics_summary.reconstruction_summary(acc, bootstrap, num_resamples)


@register
class ClassificationTask(Task):
  """COVID-19 / normal / other: set-valued cross-entropy on labelled examples."""
  name = 'cls'
  averaged = ('cls_probs',)

  def __init__(self, config):
    super().__init__(config)
    self.num_classes = config.model.num_classes

  def head(self, model, bottom, skips, train):
    classifier = models.Classifier(self.num_classes, tuple(self.config.model.cls_hidden),
                                   self.config.model.dropout, model.dtype, name='classifier')
    return {'cls_logits': classifier(bottom, train)}

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
    acc.update(predictions['cls_probs'], batch['label'], valid=valid,
               sources=batch.get('source'),
               covid_positive=covid_vs_rest(np.asarray(batch['label_set'])))

  def summarize(self, acc, bootstrap=True, num_resamples=metrics_summary.NUM_RESAMPLES):
    return metrics_summary.classification_summary(acc, bootstrap, num_resamples)


def enabled_tasks(config) -> tuple:
  """Names of tasks with a positive loss weight, in registration order."""
  weights = dict(config.loss.weights)
  unknown = sorted(set(weights) - set(TASK_CLASSES))
  if unknown:
    raise ConfigError(f'config.loss.weights names unknown tasks {unknown}; '
                      f'tasks: {", ".join(TASK_CLASSES)}')
  return tuple(name for name in TASK_CLASSES if weights.get(name, 0) > 0)


def make_tasks(config) -> dict:
  """Task name -> Task for every task the config trains (`enabled_tasks`)."""
  return {name: TASK_CLASSES[name](config) for name in enabled_tasks(config)}


def flip_back(tasks: dict, predictions: dict) -> dict:
  """Predictions of left-right flipped slices, with every task's spatial
  outputs flipped back into the slices' own orientation."""
  spatial = {key for task in tasks.values() for key in task.spatial}
  return {k: v[:, :, ::-1] if k in spatial else v for k, v in predictions.items()}


def average(tasks: dict, members: list) -> dict:
  """The first member's predictions, with every task's `averaged` outputs
  replaced by their mean over `members` (test-time flips already flipped
  back, or an ensemble's models) and what follows from them recomputed."""
  out = dict(members[0])
  for task in tasks.values():
    for key in task.averaged:
      if key in out:
        out[key] = sum(m[key] for m in members) / len(members)
  for task in tasks.values():
    out.update(task.from_averaged(out))
  return out


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
