"""The multi-task ablation (Amyar et al.'s question): does training the tasks together help?

  launch/sweep.py --plan configs/ablation.py --root runs/ablation            # run (re-entrant)
  launch/sweep.py --plan configs/ablation.py --root runs/ablation --collect  # table, plot, CSV
  launch/sweep.py --plan configs/ablation.py --root runs/ablation --dry_run  # SLURM / TPU-VM

Every arm is a preset of `configs/real.py` at its CPU scale (the recipe of
`real.py:cpu`, with every ingredient it keeps), trained with each seed on the
same budget, then evaluated on validation (best checkpoint). `:tiny` is a
2 x 2 plan of a few steps on synthetic data, for tests.
"""

import ml_collections

# (arm, the config preset it trains), in table order. Arms that change the recipe rather than
# the tasks (e.g. without the unlabelled-data ingredients) join here once
# real.py:cpu keeps such an ingredient (issue 13: none is kept yet).
ARMS = (
    ('full', 'cpu'),
    ('seg_only', 'cpu,seg_only'),
    ('cls_only', 'cpu,cls_only'),
    ('no_recon', 'cpu,no_recon'),
    ('uncertainty', 'cpu,uncertainty'),
)


def get_config(arg=None):
  plan = ml_collections.ConfigDict()
  plan.name = 'ablation'
  plan.config = 'configs/real.py'
  plan.arms = ARMS
  plan.seeds = (0, 1, 2)
  plan.baseline = 'full'  # compared, seed by seed, with every other arm
  plan.overrides = ()  # (KEY, VALUE) pairs: --config.KEY=VALUE for every run
  plan.split = 'validation'
  if arg == 'tiny':
    plan.name = 'ablation:tiny'
    plan.config = 'configs/default.py'
    plan.arms = (('full', 'tiny'), ('seg_only', 'tiny,seg_only'))
    plan.seeds = (0, 1)
    plan.overrides = (('train.num_train_steps', 2), ('train.eval_every_steps', 2),
                      ('train.checkpoint_every_steps', 2), ('eval.bootstrap_resamples', 20))
  elif arg:
    raise ValueError(f'unknown plan variant {arg!r}; valid: tiny (or none)')
  return plan
