"""Issue 13's protocol as a plan: each quality ingredient against the plain recipe, over seeds.

  launch/sweep.py --plan configs/quality.py --root runs/quality            # run (re-entrant)
  launch/sweep.py --plan configs/quality.py --root runs/quality --collect  # table, plot, CSV

Every arm is `configs/real.py:cpu` (3000 steps) plus the ingredient under
test; `base` is the recipe without any. `--collect` compares each arm with
`base` seed by seed (paired t-test), which is the rule for keeping an
ingredient: it must win by more than the spread between seeds.

Arms that need prepared data (see README "Quality from little data"):
- `pseudo_masks`: the Inf-Net soft masks built into `data_pseudo/`
  (`mtl-jax build-data covid19_ct_seg --data_dir data_pseudo --use_pseudo_masks`,
  the other sources linked from `data/`).

Two-stage arms: `pretrain` is the self-supervised stage (masked-patch
in-painting, `real.py:cpu,pretrain`, 1000 steps; only its reconstruction is
comparable with `base`); `pretrained` is `base` started from the same seed's
`pretrain` run. Together ~100 min per seed on the 2-core CPU.
"""

import ml_collections

PSEUDO_DATA_DIR = 'data_pseudo'

ARMS = (
    ('base', 'cpu'),
    ('pseudo_masks', 'cpu', (('data.data_dir', PSEUDO_DATA_DIR),
                             ('loss.pseudo_weight', 0.5))),
    ('pretrain', 'cpu,pretrain'),
    ('pretrained', 'cpu', (('init_from', '{root}/pretrain/seed_{seed}'),)),
)


def get_config(arg=None):
  plan = ml_collections.ConfigDict()
  plan.name = 'quality'
  plan.config = 'configs/real.py'
  plan.arms = ARMS
  plan.seeds = (0, 1)
  plan.baseline = 'base'
  plan.overrides = ()
  plan.split = 'validation'
  if arg:
    raise ValueError(f'unknown plan variant {arg!r}; configs/quality.py has none')
  return plan
