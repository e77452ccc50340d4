"""The config schema: every field, its default, and the named presets.

`configs/default.py` is this schema as a config file (`--config
configs/default.py:PRESET`); every other config builds on `get_config` here.

Presets (big_vision-style `get_config(arg)`):
  full      the paper-size three-task model at 256x256 (default; GPU/TPU sized)
  seg_only  ablation: segmentation alone
  cls_only  ablation: classification alone
  no_recon  ablation: segmentation + classification, no reconstruction decoder
  uncertainty  ablation: learned uncertainty weighting of the task losses
  no_unlabelled  ablation: without the unlabelled-data ingredients (no pseudo
            labels, no pre-trained start; reconstruction still sees every slice)
  pretrain  self-supervised stage: encoder + reconstruction decoder learn
            masked-patch in-painting on every slice (no labels); a three-task
            run then starts from it with --config.init_from=WORKDIR (or, in
            one command, set train.pretrain_steps: mtl_jax/config/stages.py)
  demo      CPU-sized three-task run on synthetic CT (what `make demo` trains)
  tiny      tiny widths at 64x64 and a few steps, for tests
Ablation presets combine with a size: `seg_only,demo` or `no_recon,tiny`.
"""

import os

import ml_collections

from mtl_jax import metrics_summary
from mtl_jax.config import ingredients, stages
from mtl_jax.data import preprocess

SIZE_PRESETS = ('full', 'demo', 'tiny')
ABLATIONS = ('seg_only', 'cls_only', 'no_recon', 'uncertainty', 'no_unlabelled')
STAGES = ('pretrain',)
PRESETS = SIZE_PRESETS + ABLATIONS + STAGES


def split_presets(arg: str | None, valid, default: str, usage: str | None = None) -> list[str]:
  """The preset names in 'a,b,c' (`default` when empty), each checked against
  `valid`: the one parser of every config file's ARG. `usage` says what to
  give instead, in the error (default: the valid names)."""
  names = [a.strip() for a in (arg or default).split(',') if a.strip()]
  unknown = [n for n in names if n not in valid]
  if unknown:
    raise ValueError(f'unknown preset(s) {unknown}; ' + (
        usage or f'valid presets: {", ".join(valid)} (combine with commas)'))
  return names


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Every field at its default (the paper-size model), then the presets in
  ARG applied in order (module docstring)."""
  names = split_presets(arg, PRESETS, 'full')

  config = ml_collections.ConfigDict()
  config.seed = 0
  # Fine-tune: start a fresh run from another run's weights wherever it has
  # them (e.g. a pre-trained encoder); '' starts from scratch. Ignored on resume.
  config.init_from = ''

  config.data = ml_collections.ConfigDict()
  config.data.data_dir = os.environ.get('MTL_DATA_DIR', 'data')
  # Datasets mixed for training, with sampling weights.
  config.data.sources = ml_collections.ConfigDict({'synthetic_ct': 1.0})
  # Datasets evaluated (each reported alone under `by_source`, and pooled).
  config.data.eval_sources = ('synthetic_ct',)
  config.data.image_size = 256
  # Progressive resizing: ((size, until_step), ...) trains the steps up to
  # each until_step on slices downsized to `size`; later steps (and all
  # evaluation) at image_size. () trains at image_size throughout.
  config.data.train_size_schedule = ()
  # Preprocessing recorded in every checkpoint and replayed by predict.
  config.data.window_hu = preprocess.LUNG_WINDOW
  # 'hu' (CT in Hounsfield units, windowed) or '8bit' (renderings scaled to [0, 1]).
  config.data.input_kind = 'hu'
  # Intensity standardisation (preprocess.STANDARDIZE_MODES): 'per_source'
  # maps each source's foreground mean/std (training split) onto the
  # reference; prediction maps a study by its own. 'per_image' does it per slice.
  config.data.standardize = 'none'
  config.data.standardize_reference = (0.5, 0.27)
  # Sample the classes of a source that has several equally often (the
  # source keeps its weight), so no class is over-represented within a source.
  config.data.balance_classes = False
  # Crop each slice to a square around its lungs (preprocess.lung_box), then
  # resize; predict replays it and pastes the mask back.
  config.data.lung_crop = False
  # Self-training: the name of a label set made by `mtl-jax pseudo-label`;
  # every training source that has it learns from its soft masks (with
  # loss.pseudo_weight). '' reads none.
  config.data.pseudo_labels = ''
  # Training augmentation (mtl_jax/data/augment.py), same for image and mask.
  config.data.augment = True
  config.data.flip_prob = 0.5
  config.data.rotate_deg = 10.0
  config.data.scale_range = (0.9, 1.1)
  config.data.intensity_shift = 0.05
  config.data.contrast_range = (0.9, 1.1)
  config.data.elastic_prob = 0.0
  config.data.num_workers = 0
  config.data.prefetch = 2

  config.model = ml_collections.ConfigDict()
  config.model.widths = (32, 64, 128, 256)
  config.model.bottleneck = 512
  config.model.num_seg_classes = 1
  config.model.num_classes = 3
  config.model.cls_hidden = (256,)
  config.model.dropout = 0.5
  config.model.norm = 'batch'
  config.model.compute_dtype = 'float32'

  config.loss = ml_collections.ConfigDict()
  config.loss.weights = ml_collections.ConfigDict(
      {'seg': 1.0, 'recon': 1.0, 'cls': 1.0})
  config.loss.seg_ce_weight = 1.0
  # Pseudo labels (model-made soft masks, `soft_mask`) as weak segmentation
  # targets: their own weight (0: off), and the soft-probability band
  # (low, high) whose pixels are too uncertain to learn from.
  config.loss.pseudo_weight = 0.0
  config.loss.pseudo_confidence = (0.3, 0.7)
  # Slices labelled exactly "normal" show no lesion: pixel cross-entropy
  # towards background on them (those without a ground-truth mask), at this
  # weight; 0: off (the segmentation head then never sees a lesion-free slice).
  config.loss.normal_no_lesion_weight = 0.0
  config.loss.uncertainty_weighting = False
  # Masked-patch in-painting: blank this fraction of recon_mask_patch-pixel
  # squares of the training input; reconstruction restores the clean slice
  # (the `pretrain` preset). 0: the paper's plain reconstruction.
  config.loss.recon_mask_ratio = 0.0
  config.loss.recon_mask_patch = 16

  config.optim = ml_collections.ConfigDict()
  config.optim.learning_rate = 1e-3
  config.optim.end_learning_rate_factor = 0.01
  config.optim.warmup_steps = 200
  config.optim.weight_decay = 1e-4
  config.optim.grad_clip_norm = 1.0

  config.train = ml_collections.ConfigDict()
  config.train.global_batch_size = 16
  config.train.num_train_steps = 20_000
  # A self-supervised pre-training stage of this many steps first, in
  # WORKDIR/pretrain (mtl_jax/config/stages.py: the `pretrain` preset's in-painting
  # on every slice); the three tasks then start from it. 0: from scratch.
  config.train.pretrain_steps = 0
  config.train.log_every_steps = 50
  config.train.eval_every_steps = 1000
  config.train.checkpoint_every_steps = 1000
  config.train.keep_checkpoints = 3
  # Validation metric that picks `best/`; 'a+b' ranks by their mean, and
  # 'by_source/NAME/METRIC' reaches one source's figure.
  config.train.best_metric = 'dice'
  config.train.progress_bar = True

  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 32
  config.eval.bootstrap_resamples = metrics_summary.NUM_RESAMPLES
  config.eval.max_examples = -1  # -1: the whole split

  # The machine a config is meant for, read by `mtl-jax plan` (sizing only;
  # training uses whatever devices it finds). 0: unknown / this machine's.
  config.hardware = ml_collections.ConfigDict()
  config.hardware.name = ''
  config.hardware.devices = 0
  config.hardware.peak_tflops = 0.0          # per device, at compute_dtype
  config.hardware.memory_gb = 0.0            # per device
  config.hardware.interconnect_gb_s = 0.0    # per device, one direction

  for name in names:
    _apply_preset(config, name)
  config.preset = ','.join(names)
  return config


def _apply_preset(config, name):
  if name == 'full':
    return
  if name == 'demo':
    config.data.image_size = 128
    config.model.widths = (16, 32, 64, 128)
    config.model.bottleneck = 256
    config.model.cls_hidden = (128,)
    config.optim.learning_rate = 2e-3
    config.optim.warmup_steps = 30
    config.train.global_batch_size = 16
    config.train.num_train_steps = 600
    config.train.log_every_steps = 25
    config.train.eval_every_steps = 200
    config.train.checkpoint_every_steps = 200
    config.eval.batch_size = 32
  elif name == 'tiny':
    config.data.image_size = 64
    config.data.num_workers = 0
    config.model.widths = (8, 16)
    config.model.bottleneck = 32
    config.model.cls_hidden = (16,)
    config.optim.warmup_steps = 2
    config.train.global_batch_size = 8
    config.train.num_train_steps = 4
    config.train.log_every_steps = 2
    config.train.eval_every_steps = 4
    config.train.checkpoint_every_steps = 2
    config.train.progress_bar = False
    config.eval.batch_size = 16
    config.eval.bootstrap_resamples = 50
    config.eval.max_examples = 32
  elif name == 'seg_only':
    config.loss.weights.update({'seg': 1.0, 'recon': 0.0, 'cls': 0.0})
  elif name == 'cls_only':
    config.loss.weights.update({'seg': 0.0, 'recon': 0.0, 'cls': 1.0})
    config.train.best_metric = 'auc_covid'
  elif name == 'no_recon':
    config.loss.weights.update({'seg': 1.0, 'recon': 0.0, 'cls': 1.0})
  elif name == 'uncertainty':
    config.loss.uncertainty_weighting = True
  elif name == 'no_unlabelled':
    ingredients.drop_unlabelled(config)
  elif name == 'pretrain':  # the stage that train.pretrain_steps runs first
    config.update_from_flattened_dict(dict(stages.PRETRAIN_OVERRIDES))
