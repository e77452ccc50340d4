"""The multi-task ablation (Amyar et al.'s question): does training the tasks together help?

  launch/sweep.py --plan configs/ablation.py --root runs/ablation            # run (re-entrant)
  launch/sweep.py --plan configs/ablation.py --root runs/ablation --collect  # table, plot, CSV
  launch/sweep.py --plan configs/ablation.py --root runs/ablation --dry_run  # SLURM / TPU-VM
  launch/sweep.py --plan configs/ablation.py:gpu --root runs/ablation_gpu --dry_run --gpus_per_task 1
  launch/sweep.py --plan configs/ablation.py:tpu --root gs://BUCKET/ablation_tpu --dry_run

Every arm is a preset of `configs/real.py` at its CPU scale (the recipe of
`real.py:cpu`, with every ingredient it keeps), trained with each seed on the
same budget, then evaluated on validation at its last step (`plan.checkpoint`).
When the recipe learns from unlabelled data (pseudo labels, a pre-trained
start), a `no_unlabelled` arm trains it without them.

Budget: 18 runs at real.py:cpu's 3000 steps did not fit the 2-core CPU
(docs/experiments.md), so every run is shortened to RUN_STEPS. `:length_check`
trains the full, seg_only and cls_only arms at the full 3000 steps with two
seeds, to show that the ranking at the shorter length is the ranking at full
length (docs/experiments.md; `full` is the quality plan's `together`, which
`--reuse_from` links). `:gpu` and `:tpu` are the same arms on `real.py:gpu` and
`real.py:tpu` at the recipe's own length (20,000 steps; RUN_STEPS is the
2-core CPU's budget, not the recipe's). `:tiny` is a 2 x 2 plan of a few steps on synthetic data,
for tests.
"""

import os

import ml_collections

from mtl_jax.config import ingredients, loader

RECIPE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'real.py')

SCALES = ('cpu', 'gpu', 'tpu')  # real.py's scales; a plan variant of each
# (arm, the preset modifier it adds to the scale), in table order.
TASK_ARMS = (
    ('full', ''),
    ('seg_only', 'seg_only'),
    ('cls_only', 'cls_only'),
    ('no_recon', 'no_recon'),
    ('uncertainty', 'uncertainty'),
)
# Joins the plan when the recipe learns from unlabelled data through pseudo
# labels or a pre-trained start (issue 13's kept ingredients): the same
# recipe without them. Its overrides switch them off explicitly, so that
# neither the plan's overrides nor a sweep's --set bring them back.
RECIPE_ARM = ('no_unlabelled', 'no_unlabelled', ingredients.UNLABELLED_OFF)


def _preset(scale: str, modifier: str) -> str:
  return f'{scale},{modifier}' if modifier else scale


def arms(overrides=(), scale='cpu') -> tuple:
  """TASK_ARMS at real.py's `scale` (('full', 'gpu'), ('seg_only',
  'gpu,seg_only'), ...), and RECIPE_ARM when real.py:SCALE with `overrides`
  ((key, value) pairs) has an unlabelled-data ingredient."""
  recipe = loader.load_config(f'{RECIPE}:{scale}')
  recipe.update_from_flattened_dict(dict(overrides))
  chosen = TASK_ARMS + ((RECIPE_ARM,) if ingredients.uses_unlabelled(recipe) else ())
  return tuple((arm, _preset(scale, modifier), *own) for arm, modifier, *own in chosen)


RUN_STEPS = 1500  # of real.py:cpu's 3000
# Every run is compared at its last step, so the evaluations on the way only
# draw its curve: every 500 steps, not 250, saves ~3 min of each 40-80 min run.
EVAL_EVERY = 500


def get_config(arg=None):
  plan = ml_collections.ConfigDict()
  plan.name = 'ablation'
  plan.config = 'configs/real.py'
  # (KEY, VALUE) pairs: --config.KEY=VALUE for every run
  plan.overrides = (('train.num_train_steps', RUN_STEPS), ('train.eval_every_steps', EVAL_EVERY))
  plan.arms = arms(plan.overrides)
  plan.seeds = (0, 1, 2)
  plan.baseline = 'full'  # compared, seed by seed, with every other arm
  plan.split = 'validation'
  # Each run is compared at its last step, not its best validation step:
  # picking the best of 6-12 noisy evaluations on the same 10 MedSeg slices
  # that are reported favours the noisier arm.
  plan.checkpoint = 'latest'
  if arg == 'length_check':
    plan.name = 'ablation:length_check'
    # cls_only too: at 1500 steps the AUCs are still rising while Dice is
    # flat (docs/log/2026-12.md, "The ablation's first run").
    plan.arms = (('full', 'cpu'), ('seg_only', 'cpu,seg_only'), ('cls_only', 'cpu,cls_only'))
    plan.seeds = (0, 1)
    plan.overrides = ()  # real.py:cpu's own length
  elif arg in ('gpu', 'tpu'):
    plan.name = f'ablation:{arg}'
    plan.overrides = ()  # the recipe's own length: RUN_STEPS is the CPU's budget
    plan.arms = arms(plan.overrides, arg)
  elif arg == 'tiny':
    plan.name = 'ablation:tiny'
    plan.config = 'configs/default.py'
    plan.arms = (('full', 'tiny'), ('seg_only', 'tiny,seg_only'))
    plan.seeds = (0, 1)
    plan.overrides = (('train.num_train_steps', 2), ('train.eval_every_steps', 2),
                      ('train.checkpoint_every_steps', 2), ('eval.bootstrap_resamples', 20))
  elif arg:
    raise ValueError(f'unknown plan variant {arg!r}; valid: gpu, tpu, length_check, tiny (or none)')
  return plan
