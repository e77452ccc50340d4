"""The recipe's optional ingredients: one table, and every list derived from it.

An ingredient is a setting a run may add to the three tasks' plain training
(configs/default.py), named with the value that switches it off. Everything
that needs a list of them reads this table: the `no_unlabelled` ablation
(the ingredients that learn from unlabelled data), the pre-training stage
(every ingredient is a setting of the three-task stage only, so the stage
switches them all off), and the quality plan (the recipe's ingredients, off,
is its `base` arm). What each one measured: docs/results.md.
"""

from __future__ import annotations

import dataclasses

from mtl_jax import dotted_paths


@dataclasses.dataclass(frozen=True)
class Ingredient:
  name: str
  key: str           # the config field (dotted)
  off: object        # the value that switches it off
  unlabelled: bool   # learns from data without labels (the `no_unlabelled` arm drops it)
  what: str


TABLE = (
    Ingredient('pseudo_masks', 'loss.pseudo_weight', 0.0, True,
               'model-made soft masks (Inf-Net, COVID-19-CT-Seg) as weak segmentation targets'),
    Ingredient('self_training', 'data.pseudo_labels', '', True,
               'a label set made by `mtl-jax pseudo-label` (a teacher run) as weak targets'),
    Ingredient('pretrained_start', 'init_from', '', True,
               "another run's weights as the start (e.g. a pre-trained encoder)"),
    Ingredient('pretrain_stage', 'train.pretrain_steps', 0, True,
               'a masked-patch in-painting stage on every slice first, in the same run'),
    Ingredient('normal_no_lesion', 'loss.normal_no_lesion_weight', 0.0, False,
               'slices labelled normal learnt as lesion-free'),
)
NAMES = tuple(i.name for i in TABLE)


def _pick(names) -> tuple[Ingredient, ...]:
  unknown = [n for n in names if n not in NAMES]
  if unknown:
    raise ValueError(f'unknown ingredient(s) {unknown}; valid: {", ".join(NAMES)}')
  return tuple(i for i in TABLE if i.name in names)


def off(*names: str) -> tuple[tuple[str, object], ...]:
  """(key, off value) pairs that switch these ingredients off, in table order."""
  return tuple((i.key, i.off) for i in _pick(names))


def active(config) -> tuple[str, ...]:
  """The ingredients a config has on (ConfigDict or its dict)."""
  return tuple(i.name for i in TABLE if dotted_paths.get(config, i.key, i.off) != i.off)


UNLABELLED = tuple(i.name for i in TABLE if i.unlabelled)
# What the `no_unlabelled` ablation switches off.
UNLABELLED_OFF = off(*UNLABELLED)
# Settings of the three-task stage only, off in the pre-training stage (so its
# config, and so its weights, do not depend on them): every ingredient.
THREE_TASK_ONLY_OFF = off(*NAMES)


def uses_unlabelled(config) -> bool:
  """Whether the config learns from unlabelled data (its ablation then has a
  `no_unlabelled` arm)."""
  return any(name in UNLABELLED for name in active(config))


def drop_unlabelled(config) -> None:
  """The `no_unlabelled` ablation: no pseudo labels, no pre-trained start."""
  config.update_from_flattened_dict(dict(UNLABELLED_OFF))
