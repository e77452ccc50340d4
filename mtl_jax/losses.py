"""Per-task losses, each masked per example by which labels it carries.

A batch mixes datasets: some examples have a lesion mask, some only a class
label (or only a *set* of possible classes), all have an image. Every loss
here takes a per-example weight (`has_mask`, `has_label`, or padding validity)
and averages over the examples whose weight is non-zero only. An empty task
gives exactly 0 (never NaN), and a weight of 0 gives exactly zero gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_EPS = 1e-6


def masked_mean(per_example: jnp.ndarray, weight: jnp.ndarray) -> jnp.ndarray:
  """Mean of `per_example` over examples with weight > 0; 0 when there are none.

  `jnp.where` (not multiplication) keeps NaN/inf from a masked-out example out
  of both the value and the gradient.
  """
  weight = weight.astype(jnp.float32)
  safe = jnp.where(weight > 0, per_example, 0.0)
  return jnp.sum(safe * weight) / jnp.maximum(jnp.sum(weight), _EPS)


def reconstruction_mse(recon, images, weight):
  """Mean squared error of the reconstruction, per example then masked."""
  per_example = jnp.mean(jnp.square(recon.astype(jnp.float32) - images),
                         axis=(1, 2, 3))
  return masked_mean(per_example, weight)


def mask_patches(images, rng, ratio: float, patch: int):
  """Images (B, H, W) with about `ratio` of their patch x patch squares set to 0.

  The corruption of masked-patch in-painting: each square is blanked
  independently with probability `ratio` (a partial square at the border
  goes with its grid cell).
  """
  b, h, w = images.shape
  grid = (b, -(-h // patch), -(-w // patch))
  keep = jax.random.uniform(rng, grid) >= ratio
  keep = jnp.repeat(jnp.repeat(keep, patch, axis=1), patch, axis=2)[:, :h, :w]
  return jnp.where(keep, images, jnp.zeros_like(images))


def seg_probabilities(seg_logits):
  """Foreground probabilities (B, H, W, K_fg) for the Dice loss.

  One output channel means lesion-vs-background with a sigmoid; K > 1
  channels are softmax classes whose class 0 is background.
  """
  seg_logits = seg_logits.astype(jnp.float32)
  if seg_logits.shape[-1] == 1:
    return jax.nn.sigmoid(seg_logits)
  return jax.nn.softmax(seg_logits, axis=-1)[..., 1:]


def seg_one_hot(masks, num_seg_classes):
  """Targets matching `seg_probabilities`: (B, H, W, K_fg) in {0, 1}."""
  if num_seg_classes == 1:
    return (masks > 0).astype(jnp.float32)[..., None]
  return jax.nn.one_hot(masks, num_seg_classes, dtype=jnp.float32)[..., 1:]


def soft_dice_loss(seg_logits, masks, weight, smooth: float = 1.0):
  """1 - soft Dice, pooled over the batch's examples that have a mask.

  Pooling intersections and sums over examples (the "batch Dice" of nnU-Net)
  rather than averaging per-example Dice keeps slices with small or empty
  lesions from dominating with near-undefined ratios. Multi-class masks give
  the mean over foreground classes. No example with a mask gives 0.
  """
  probs = seg_probabilities(seg_logits)
  target = seg_one_hot(masks, seg_logits.shape[-1])
  w = (weight > 0).astype(jnp.float32)[:, None, None, None]
  probs = jnp.where(w > 0, probs, 0.0)
  axes = (0, 1, 2)
  intersection = jnp.sum(probs * target * w, axis=axes)
  denominator = jnp.sum((probs + target) * w, axis=axes)
  dice = (2.0 * intersection + smooth) / (denominator + smooth)
  return 1.0 - jnp.mean(dice)


def pixel_cross_entropy(seg_logits, masks, weight):
  """Pixel-wise (binary or softmax) cross-entropy, per example then masked."""
  seg_logits = seg_logits.astype(jnp.float32)
  if seg_logits.shape[-1] == 1:
    target = (masks > 0).astype(jnp.float32)
    logits = seg_logits[..., 0]
    per_pixel = (jnp.maximum(logits, 0) - logits * target
                 + jnp.log1p(jnp.exp(-jnp.abs(logits))))
  else:
    log_p = jax.nn.log_softmax(seg_logits, axis=-1)
    per_pixel = -jnp.take_along_axis(log_p, masks[..., None], axis=-1)[..., 0]
  return masked_mean(jnp.mean(per_pixel, axis=(1, 2)), weight)


def pseudo_label_loss(seg_logits, soft_mask, weight, confidence=(0.3, 0.7)):
  """Lesion-vs-background cross-entropy plus soft Dice against a model-made mask.

  Pseudo labels are weak: pixels whose soft probability lies strictly inside
  `confidence` (low, high) are ignored, and the confident ones are
  thresholded at 0.5 (lesion = soft >= high, background = soft <= low).
  Multi-class models score lesion as "not background". Pooled over the
  examples with weight > 0 (those that carry a soft mask); none gives 0.
  """
  low, high = confidence
  logits = seg_logits.astype(jnp.float32)
  if logits.shape[-1] == 1:
    log_lesion = jax.nn.log_sigmoid(logits[..., 0])
    log_background = jax.nn.log_sigmoid(-logits[..., 0])
  else:
    log_p = jax.nn.log_softmax(logits, axis=-1)
    log_background = log_p[..., 0]
    log_lesion = jax.scipy.special.logsumexp(log_p[..., 1:], axis=-1)
  target = (soft_mask >= high).astype(jnp.float32)
  pixels = ((soft_mask <= low) | (soft_mask >= high)).astype(jnp.float32)
  pixels = pixels * (weight > 0).astype(jnp.float32)[:, None, None]
  per_pixel = -(target * log_lesion + (1.0 - target) * log_background)
  ce = jnp.sum(per_pixel * pixels) / jnp.maximum(jnp.sum(pixels), 1.0)
  prob = jnp.exp(log_lesion) * pixels
  dice = (2.0 * jnp.sum(prob * target) + 1.0) / (jnp.sum(prob + target * pixels) + 1.0)
  return jnp.where(jnp.sum(pixels) > 0, ce + 1.0 - dice, 0.0)


def set_cross_entropy(cls_logits, label_set, weight):
  """Cross-entropy against a *set* of allowed classes: -log sum_{c in set} p_c.

  An exact label is a one-element set, so this is ordinary cross-entropy for
  it; "non-COVID" = {normal, other} is scored honestly without guessing which.
  """
  logits = cls_logits.astype(jnp.float32)
  log_p = jax.nn.log_softmax(logits, axis=-1)
  allowed = label_set > 0
  has_any = jnp.any(allowed, axis=-1)
  # An example with an empty set would give logsumexp(-inf...) = -inf and a NaN
  # gradient even under `where`; give it every class, then mask it out.
  allowed = jnp.where(has_any[:, None], allowed, True)
  log_p_set = jax.nn.logsumexp(jnp.where(allowed, log_p, -jnp.inf), axis=-1)
  per_example = jnp.where(has_any, -log_p_set, 0.0)
  return masked_mean(per_example, weight * has_any)


def combine_task_losses(losses: dict, weights: dict, log_vars=None,
                        tasks=None) -> jnp.ndarray:
  """Weighted sum of task losses, or Kendall-Gal-Cipolla uncertainty weighting.

  With `log_vars` (one learned s_t per task, in `tasks` order), the total is
  sum_t exp(-s_t) * L_t + s_t: each task's weight is learned as an inverse
  homoscedastic variance, and the +s_t term stops it from collapsing to 0.
  """
  if log_vars is None:
    return sum(weights[name] * value for name, value in losses.items())
  total = 0.0
  for i, name in enumerate(tasks):
    total = total + jnp.exp(-log_vars[i]) * losses[name] + log_vars[i]
  return total
