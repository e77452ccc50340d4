"""The multi-task network of Amyar et al. 2020: one encoder, three heads.

A U-Net-style encoder feeds (1) a segmentation decoder with skip connections,
(2) a reconstruction decoder *without* skips (so the bottleneck must carry the
image, which is what makes reconstruction a useful auxiliary task and an
out-of-distribution signal), and (3) an MLP classifier on pooled bottleneck
features. The heads belong to the tasks (`tasks.py`): this module holds the
encoder, the building blocks, and the model that calls the enabled heads.
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from mtl_jax.errors import ConfigError



class Norm(nn.Module):
  """BatchNorm (the paper's choice) or GroupNorm, chosen by config.

  Under `jit` with a batch sharded over a mesh, BatchNorm's batch mean is a
  global reduction, so statistics are averaged across devices for free.
  """
  kind: str = 'batch'
  groups: int = 8
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    if self.kind == 'batch':
      return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                          dtype=self.dtype)(x)
    if self.kind == 'group':
      return nn.GroupNorm(num_groups=min(self.groups, x.shape[-1]),
                          dtype=self.dtype)(x)
    raise ConfigError(f'model.norm must be "batch" or "group", got {self.kind!r}')


class ConvBlock(nn.Module):
  """[conv3x3 -> norm -> ReLU] x 2, the unit of every level."""
  features: int
  norm: str = 'batch'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    for _ in range(2):
      x = nn.Conv(self.features, (3, 3), use_bias=False, dtype=self.dtype)(x)
      x = Norm(self.norm, dtype=self.dtype)(x, train)
      x = nn.relu(x)
    return x


class Upsample2x(nn.Module):
  """A 2x2, stride-2 transposed convolution written as a per-pixel matmul.

  Mathematically identical to `nn.ConvTranspose(features, (2, 2), (2, 2))`
  (kernel and stride equal, so output pixels never overlap): each input pixel
  is mapped by one dense layer to a 2x2 block of outputs, then the blocks are
  laid out in space. XLA's CPU backward pass of ConvTranspose is several times
  slower than this (bench/RESULTS.md), while a matmul is fast everywhere.
  """
  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, _ = x.shape
    y = nn.Dense(4 * self.features, use_bias=False, dtype=self.dtype)(x)
    y = y.reshape(b, h, w, 2, 2, self.features)
    y = y.transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, self.features)
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    return y + bias.astype(y.dtype)


def max_pool_2x2(x):
  """2x2, stride-2 max pooling of (B, H, W, C) as a reshape and a max.

  Same values as `nn.max_pool`; its gradient is elementwise, whereas XLA's
  CPU gradient of `reduce_window` materialises argmax indices (iota) and a
  scatter (bench/RESULTS.md). Ties share the gradient; after ReLU they are
  exact zeros, whose gradient ReLU discards anyway.
  """
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class Encoder(nn.Module):
  """Levels of ConvBlock then 2x2 max-pool; returns skips and bottleneck."""
  widths: Sequence[int]
  bottleneck: int
  norm: str = 'batch'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    skips = []
    for width in self.widths:
      x = ConvBlock(width, self.norm, self.dtype)(x, train)
      skips.append(x)
      x = max_pool_2x2(x)
    x = ConvBlock(self.bottleneck, self.norm, self.dtype)(x, train)
    return skips, x


class Decoder(nn.Module):
  """U-Net decoder; with `use_skips=False` it is the reconstruction decoder."""
  widths: Sequence[int]
  out_channels: int
  use_skips: bool
  norm: str = 'batch'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, skips, train: bool):
    for width, skip in zip(reversed(self.widths), reversed(skips)):
      x = Upsample2x(width, self.dtype)(x)
      if self.use_skips:
        x = jnp.concatenate([x, skip.astype(x.dtype)], axis=-1)
      x = ConvBlock(width, self.norm, self.dtype)(x, train)
    return nn.Conv(self.out_channels, (1, 1), dtype=jnp.float32)(x)


class Classifier(nn.Module):
  """MLP with dropout on globally average-pooled bottleneck features."""
  num_classes: int
  hidden: Sequence[int] = (256,)
  dropout: float = 0.5
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = jnp.mean(x, axis=(1, 2))
    for width in self.hidden:
      x = nn.relu(nn.Dense(width, dtype=self.dtype)(x))
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=jnp.float32)(x)


class MultiTaskUNet(nn.Module):
  """The shared encoder, and the heads of the enabled tasks.

  Input: images (B, H, W, 1) in [0, 1]; H and W divisible by 2**len(widths).
  `heads` are the tasks' `head` methods (`tasks.Task.head`), called in order
  with the bottleneck and the skip features; each adds its outputs to the
  dict (`seg_logits` (B, H, W, C), `recon` (B, H, W, 1), `cls_logits`
  (B, num_classes) for the built-in tasks). With `uncertainty_weighting`,
  the model also owns one learned log variance per head (Kendall et al.
  2018), used by the loss.
  """
  widths: Sequence[int] = (32, 64, 128, 256)
  bottleneck: int = 512
  norm: str = 'batch'
  heads: Sequence[Callable] = ()
  uncertainty_weighting: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False):
    x = images.astype(self.dtype)
    skips, bottom = Encoder(self.widths, self.bottleneck, self.norm,
                            self.dtype, name='encoder')(x, train)
    # Per-channel spatial mean and spread at every encoder level: what the
    # out-of-distribution score compares with the training data (mtl_jax/ood.py).
    levels = [t.astype(jnp.float32) for t in list(skips) + [bottom]]
    out = {'features': jnp.concatenate([jnp.mean(t, axis=(1, 2)) for t in levels]
                                       + [jnp.std(t, axis=(1, 2)) for t in levels], -1)}
    for head in self.heads:
      out.update(head(self, bottom, skips, train))
    if self.uncertainty_weighting:
      out['task_log_vars'] = self.param(
          'task_log_vars', nn.initializers.zeros, (len(self.heads),))
    return out


def build_model(config, tasks: dict) -> MultiTaskUNet:
  """The model a config describes, with heads for the given tasks ({name: Task})."""
  model_config = config.model
  dtypes = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
  if model_config.compute_dtype not in dtypes:
    raise ConfigError(f'model.compute_dtype must be one of {sorted(dtypes)}, '
                      f'got {model_config.compute_dtype!r}')
  return MultiTaskUNet(
      widths=tuple(model_config.widths),
      bottleneck=model_config.bottleneck,
      norm=model_config.norm,
      heads=tuple(task.head for task in tasks.values()),
      uncertainty_weighting=config.loss.uncertainty_weighting,
      dtype=dtypes[model_config.compute_dtype])
