"""Train the three tasks on the public COVID-19 CT data in ../shared/data.

  mtl-jax train --config configs/real.py:cpu --workdir runs/real_cpu
  mtl-jax train --config configs/real.py:gpu --workdir runs/real_gpu

Segmentation learns from MedSeg (its 10-slice validation fold is the Dice
figure), classification from every labelled source (UCSD non-COVID as the
set {normal, other}), reconstruction from everything. All sources are 8-bit
renderings, not HU. Build the datasets first (at the preset's image size):
  for d in medseg_covid covid19_ct_seg covid_ct mosmed sars_cov2_ct china_negative; do
    mtl-jax build-data $d --data_dir data --image_size 128; done
"""

import ml_collections

from configs import default

SOURCES = {
    'medseg_covid': 0.25,    # masks (GGO, consolidation), COVID
    'covid19_ct_seg': 0.15,  # COVID volumes' slices (pseudo masks unused)
    'covid_ct': 0.2,         # UCSD: COVID / non-COVID (set label)
    'mosmed': 0.15,          # normal (CT-0) / COVID (CT-1, CT-2)
    'sars_cov2_ct': 0.15,    # COVID / other pathology
    'china_negative': 0.1,   # normal
}
PRESETS = ('cpu', 'gpu')


def get_config(arg=None):
  preset, _, rest = (arg or 'cpu').partition(',')
  if preset not in PRESETS:
    raise ValueError(f'unknown preset {preset!r}; valid presets: {", ".join(PRESETS)}')
  config = default.get_config(rest or ('demo' if preset == 'cpu' else 'full'))
  config.data.sources = ml_collections.ConfigDict(SOURCES)
  config.data.eval_sources = tuple(SOURCES)
  config.data.input_kind = '8bit'
  # Against the source shortcut: each slice's brightness/contrast mapped to
  # one reference, and MosMed/SARS/UCSD classes drawn equally often. Per
  # image, not per source: a user's single scan has no source statistics, so
  # only this is replayed exactly by `mtl-jax predict` (evaluate == predict).
  config.data.standardize = 'per_image'
  config.data.balance_classes = True
  config.data.elastic_prob = 0.2
  config.data.rotate_deg = 15.0
  config.model.num_seg_classes = 1
  # Both tasks pick the kept model: by Dice alone (10 MedSeg slices, CI +-0.08)
  # the best step was one where classification had not converged yet.
  config.train.best_metric = 'dice+auc_covid'
  config.eval.max_examples = -1
  if preset == 'cpu':
    config.train.num_train_steps = 3000
    config.train.eval_every_steps = 250
    config.train.checkpoint_every_steps = 250
    config.optim.warmup_steps = 50
    config.data.num_workers = 0
  else:
    config.train.num_train_steps = 20_000
    config.train.global_batch_size = 32
    config.data.num_workers = 8
  config.preset = f'real:{arg or "cpu"}'
  return config
