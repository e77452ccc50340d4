"""Train the three tasks on the public COVID-19 CT data in ../shared/data.

  mtl-jax train --config configs/real.py:cpu --workdir runs/real_cpu
  mtl-jax train --config configs/real.py:gpu --workdir runs/real_gpu
  mtl-jax train --config configs/real.py:tpu --workdir gs://BUCKET/runs/real_tpu  # launch/tpu_vm.sh

Self-supervised pre-training first (every slice, no labels), then the three
tasks from its encoder and reconstruction decoder:
  mtl-jax train --config configs/real.py:cpu,pretrain --workdir runs/pretrain
  mtl-jax train --config configs/real.py:cpu --workdir runs/real_cpu \
      --config.init_from=runs/pretrain

Segmentation learns from MedSeg (its 10-slice validation fold is the Dice
figure), classification from every labelled source (UCSD non-COVID as the
set {normal, other}), reconstruction from everything. All sources are 8-bit
renderings, not HU. Build the datasets first (at the preset's image size):
  for d in medseg_covid covid_ct mosmed sars_cov2_ct china_negative; do
    mtl-jax build-data $d --data_dir data --image_size 128; done
  mtl-jax build-data covid19_ct_seg --data_dir data --image_size 128 --use_pseudo_masks
"""

import ml_collections

from mtl_jax.config import hardware, ingredients, schema

SOURCES = {
    'medseg_covid': 0.25,    # masks (GGO, consolidation), COVID
    'covid19_ct_seg': 0.15,  # COVID volumes' slices, Inf-Net pseudo masks
    'covid_ct': 0.2,         # UCSD: COVID / non-COVID (set label)
    'mosmed': 0.15,          # normal (CT-0) / COVID (CT-1, CT-2)
    'sars_cov2_ct': 0.15,    # COVID / other pathology
    'china_negative': 0.1,   # normal
}
# Sources with both classes in validation: a within-source AUC is defined.
AUC_SOURCES = ('covid_ct', 'mosmed', 'sars_cov2_ct')
# scale -> the default.py size it uses. `tpu` is `gpu`'s recipe with
# configs/tpu.py's hardware deltas (mtl_jax/config/hardware.tpu_slice).
SCALES = {'cpu': 'demo', 'gpu': 'full', 'tpu': 'full'}


def get_config(arg=None):
  """`cpu`, `gpu` or `tpu`, optionally with default.py's stages and ablations
  (`cpu,pretrain`, `cpu,seg_only`, `gpu,no_recon`) or another model size
  (`cpu,tiny` for tests)."""
  modifiers = schema.ABLATIONS + schema.STAGES + schema.SIZE_PRESETS
  usage = (f'give one of {", ".join(SCALES)}, optionally with any of '
           f'{", ".join(modifiers)} (comma-separated)')
  names = schema.split_presets(arg, tuple(SCALES) + modifiers, 'cpu', usage)
  scales = [n for n in names if n in SCALES]
  modifiers = [n for n in names if n not in SCALES]
  if len(scales) > 1:
    raise ValueError(f'preset {arg!r} names two scales; {usage}')
  scale = scales[0] if scales else 'cpu'
  sizes = [] if any(m in schema.SIZE_PRESETS for m in modifiers) else [SCALES[scale]]
  config = schema.get_config(','.join(sizes + modifiers))
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
  # The kept ingredients (mtl_jax/config/ingredients.py; what each measured,
  # over two seeds: docs/results.md): Inf-Net's model-made masks on
  # COVID-19-CT-Seg as weak targets (needs covid19_ct_seg built with
  # --use_pseudo_masks), and slices labelled normal taught lesion-free (the
  # head otherwise paints much of a normal slice).
  config.loss.pseudo_weight = 0.5
  config.loss.normal_no_lesion_weight = 1.0
  # Both tasks pick the kept model: by Dice alone (10 noisy MedSeg slices)
  # the best step was one where classification had not converged yet. The
  # AUCs are within each labelled source: the pooled AUC mostly measures which
  # source a slice comes from (docs/log/2026-11.md, "Checkpoint choice for
  # comparisons"). (A stage or ablation without both tasks keeps its preset's
  # own metric.)
  if config.loss.weights.seg and config.loss.weights.cls:
    config.train.best_metric = '+'.join(
        ['dice'] + [f'by_source/{s}/auc_covid' for s in AUC_SOURCES])
  config.eval.max_examples = -1
  if scale == 'cpu':
    config.train.num_train_steps = 3000
    config.train.eval_every_steps = 250
    config.train.checkpoint_every_steps = 250
    config.optim.warmup_steps = 50
    config.data.num_workers = 0
  else:
    config.train.num_train_steps = 20_000
    config.train.global_batch_size = 32
    config.data.num_workers = 8
    # One GPU, for `mtl-jax estimate`. f32 matmuls and convolutions run on
    # TF32 tensor cores at JAX's default precision: H100 SXM's dense TF32
    # peak (989 in bf16; ~67 in f32 without tensor cores).
    config.hardware.update(name='1x NVIDIA H100 SXM 80GB', devices=1, peak_tflops=495.0,
                           memory_gb=80.0, interconnect_gb_s=0.0)
  if scale == 'tpu':  # batch 256, bf16, GroupNorm, the slice's hardware section
    hardware.tpu_slice(config)
  if 'pretrain' in modifiers:  # in-painting converges sooner than the three tasks
    config.train.num_train_steps //= 3
    # the stage train.pretrain_steps derives (config/stages.pretrain_config), so one can stand for the other
    config.update_from_flattened_dict(dict(ingredients.THREE_TASK_ONLY_OFF))
  if 'no_unlabelled' in modifiers:  # also what this recipe adds above
    ingredients.drop_unlabelled(config)
  config.preset = 'real:' + ','.join([scale] + modifiers)
  return config
