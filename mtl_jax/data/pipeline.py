"""grain input pipelines: weighted mixing of sources, per-process shares, resume.

The training stream is one global, random-access sequence of examples:
example `i` (source, shuffle position and augmentation) is a pure function of
(config, seed, i), and global batch `k` is examples `k*B .. (k+1)*B-1`. Each
process reads only its contiguous share of every global batch, so batch `k`
holds the same examples, augmented the same way, on 1 process or N and on 1
device or 8: the run does not depend on the layout it runs on. Resuming at
step `k` is `dataset[k:]`, so a resumed run sees exactly the batches the
interrupted one would have seen.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
from typing import Callable, Iterator

import grain
import numpy as np
from absl import flags

from mtl_jax.data import augment as augment_lib
from mtl_jax.data import datasets, preprocess, pseudo_labels
from mtl_jax.errors import ConfigError

# Keys the train step consumes; strings stay on the host.
NUMERIC_KEYS = ('image', 'mask', 'has_mask', 'label', 'label_set', 'has_label',
                'soft_mask', 'has_soft_mask')


# Augmentation draws from numpy's seed sequence [seed, AUGMENT_STREAM, global
# example index]. (The stream number is the value that single-process runs
# used when seeds named the process, so their data replays unchanged.)
AUGMENT_STREAM = 0


@dataclasses.dataclass(frozen=True)
class ProcessShard:
  """Which share of every global batch this host reads (multi-host ready)."""
  index: int = 0
  count: int = 1


def _numeric(example: dict) -> dict:
  out = {key: example[key] for key in NUMERIC_KEYS}
  out['valid'] = np.float32(1.0)
  return out


@dataclasses.dataclass(frozen=True)
class SplitSummary:
  """What mixing and standardisation need to know about one split."""
  moments: tuple  # foreground (count, sum, sum of squares), preprocess.foreground_moments
  groups: dict    # label set (tuple) or None (unlabelled) -> example indices

  @property
  def stats(self) -> tuple:
    return preprocess.stats_from_moments(*self.moments)


def _summarize(source, lung_crop: bool = False) -> SplitSummary:
  moments, groups = np.zeros(3), collections.defaultdict(list)
  for i in range(len(source)):
    example = crop_to_lungs(source[i]) if lung_crop else source[i]
    moments += preprocess.foreground_moments(example['image'])
    key = tuple(int(v) for v in np.asarray(example['label_set']).round()) \
        if float(example['has_label']) > 0 else None
    groups[key].append(i)
  return SplitSummary((int(moments[0]), moments[1], moments[2]), dict(groups))


@functools.lru_cache(maxsize=64)
def _summarize_built(path: str, split: str, lung_crop: bool) -> SplitSummary:
  return _summarize(datasets.DecodedSource(path, split), lung_crop)


def split_summary(source, lung_crop: bool = False) -> SplitSummary:
  """One pass over a split (cached per built dataset directory)."""
  path = getattr(source, 'path', None)
  return _summarize_built(path, source.split, lung_crop) if path \
      else _summarize(source, lung_crop)


def check_built(config) -> dict:
  """{source: its builder's preprocessing record}, checked against the config.

  Every split the run reads must exist (train of each source, validation of
  each eval source), else the one-line DatasetNotFoundError that says how to
  build it; the sources must share one HU window, and `data.window_hu` and
  `data.input_kind` must not contradict what was built (ConfigError).
  Checked before a run creates anything in its workdir.
  """
  data, records = config.data, {}
  for names, split in ((data.sources, 'train'), (data.eval_sources, 'validation')):
    for name in names:
      source = datasets.load_split(name, split, data.data_dir, data.image_size)
      records[name] = datasets.built_record(source.path)
  # Only sources with HU slices (or of unknown kind: built before records)
  # were rendered through a window.
  windows = {name: tuple(r['window_hu']) for name, r in records.items()
             if 'hu' in (r.get('input_kinds') or ['hu'])}
  if len(set(windows.values())) > 1:
    raise ConfigError('the sources were built with different HU windows ('
                      + ', '.join(f'{n}: {list(w)}' for n, w in sorted(windows.items()))
                      + '); rebuild them with one --window_hu')
  built = next(iter(windows.values()), tuple(data.window_hu))
  if tuple(float(v) for v in data.window_hu) != built:
    raise ConfigError(f'config.data.window_hu={list(data.window_hu)} but the data in '
                      f'{data.data_dir} was built with {list(built)}: set '
                      f'--config.data.window_hu to the built window, or rebuild with '
                      f'mtl-jax build-data NAME --window_hu LOW HIGH')
  labelled = _check_pseudo_label_sets(config)
  if labelled and not config.loss.pseudo_weight:
    logging.warning('data.pseudo_labels=%s is read but loss.pseudo_weight=0: the run does '
                    'not learn from it', config.data.pseudo_labels)
  if config.loss.pseudo_weight > 0 and not labelled and not any(
      r.get('soft_masks') for r in records.values()):
    raise ConfigError(f'loss.pseudo_weight={config.loss.pseudo_weight} but no source was '
                      'built with pseudo labels (mtl-jax build-data covid19_ct_seg '
                      '--use_pseudo_masks) or given a label set (mtl-jax pseudo-label, '
                      'then --config.data.pseudo_labels=SET)')
  for source, record in pseudo_label_records(config).items():
    records[source] = dict(records[source], pseudo_labels=record)
  kinds = {k for r in records.values() for k in (r.get('input_kinds') or ())}
  if kinds and data.input_kind not in kinds:
    raise ConfigError(f'config.data.input_kind={data.input_kind!r} but the built sources '
                      f'hold only {sorted(kinds)} slices')
  return records


def _check_pseudo_label_sets(config) -> list:
  """The training sources that have `data.pseudo_labels`'s label set (each
  checked against its split), or a one-line ConfigError when none has it."""
  name = config.data.pseudo_labels
  if not name:
    return []
  labelled = [source for source in config.data.sources
              if name in pseudo_labels.available(_built_path(config, source))]
  if not labelled:
    found = {s: pseudo_labels.available(_built_path(config, s)) for s in config.data.sources}
    raise ConfigError(f'config.data.pseudo_labels={name!r}, but no training source has '
                      'that label set (found: ' + (', '.join(
                          f'{s}: {sets}' for s, sets in found.items() if sets) or 'none')
                      + '); make it with mtl-jax pseudo-label')
  for source in labelled:
    training_split(config, source)  # a stale set is a one-line error now, not mid-run
  logging.info('data.pseudo_labels=%s: the label set of %s', name, ', '.join(labelled))
  return labelled


def pseudo_label_records(config) -> dict:
  """{source: its label set's record} for `data.pseudo_labels` (kept with the
  checkpoint: which teacher and step made the targets a student learnt from)."""
  name = config.data.pseudo_labels
  return {source: pseudo_labels.read_record(_built_path(config, source), name)
          for source in (config.data.sources if name else ())
          if name in pseudo_labels.available(_built_path(config, source))}


def _built_path(config, name: str) -> str:
  return datasets.load_split(name, 'train', config.data.data_dir,
                             config.data.image_size).path


def training_split(config, name: str):
  """A source's training split, with `data.pseudo_labels`'s set attached if it has one."""
  source = datasets.load_split(name, 'train', config.data.data_dir, config.data.image_size)
  label_set = config.data.pseudo_labels
  if label_set and label_set in pseudo_labels.available(source.path):
    return pseudo_labels.WithPseudoLabels(source, label_set)
  return source


def source_stats(config) -> dict:
  """{source: [foreground mean, std]} of each training split, for 'per_source'."""
  if config.data.standardize != 'per_source':
    return {}
  names = dict.fromkeys(list(config.data.sources) + list(config.data.eval_sources))
  return {name: list(split_summary(datasets.load_split(
      name, 'train', config.data.data_dir, config.data.image_size),
                                   config.data.lung_crop).stats)
          for name in names}


def make_standardizer(config, stats: dict | None = None) -> Callable | None:
  """image, source name -> standardised image; None when standardisation is off."""
  mode, reference = config.data.standardize, tuple(config.data.standardize_reference)
  if mode not in preprocess.STANDARDIZE_MODES:
    raise ConfigError(f'config.data.standardize={mode!r}; valid modes: '
                      f'{", ".join(preprocess.STANDARDIZE_MODES)}')
  if mode == 'none':
    return None
  if mode == 'per_image':
    return lambda image, source: preprocess.standardize(
        image, preprocess.foreground_stats(image), reference)
  stats = source_stats(config) if stats is None else stats
  return lambda image, source: preprocess.standardize(image, stats[source], reference)


class _Subset:
  """Some examples of a random-access source, in the given order."""

  def __init__(self, source, indices):
    self.source, self.indices = source, list(indices)

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, i):
    return self.source[self.indices[i]]


def _class_groups(source, balance: bool) -> list:
  """The source whole, or one subset per label set when balancing classes.

  Unlabelled examples (reconstruction only) keep a share like one class.
  """
  if not balance:
    return [source]
  groups = split_summary(source).groups
  return [_Subset(source, groups[key]) for key in sorted(groups, key=str)] \
      if len(groups) > 1 else [source]


def train_dataset(config, shard: ProcessShard = ProcessShard(),
                  stats: dict | None = None) -> grain.MapDataset:
  """Infinite MapDataset of this process's local training batches.

  Local batch `k` is rows `[p*L, (p+1)*L)` of global batch `k` (process `p`,
  `L` = global batch / process count), which is how
  `jax.make_array_from_process_local_data` lays the processes' rows out.
  `stats` is `source_stats(config)` when the caller already has it.
  """
  names = list(config.data.sources.keys())
  weights = [float(config.data.sources[name]) for name in names]
  if not names or min(weights) <= 0:
    raise ConfigError('config.data.sources must map at least one dataset name '
                      f'to a positive weight, got {dict(config.data.sources)}')
  global_batch = config.train.global_batch_size
  if global_batch % shard.count:
    raise ConfigError(f'train.global_batch_size={global_batch} is not divisible '
                      f'by the number of processes ({shard.count})')
  standardizer = make_standardizer(config, stats)
  streams, stream_weights = [], []
  for i, (name, weight) in enumerate(zip(names, weights)):
    source = training_split(config, name)
    groups = _class_groups(source, config.data.balance_classes)
    for j, group in enumerate(groups):
      ds = grain.MapDataset.source(group)
      ds = ds.shuffle(seed=config.seed + 1000 * i + j).repeat()
      if config.data.lung_crop:
        ds = ds.map(crop_to_lungs)
      if standardizer is not None:
        ds = ds.map(functools.partial(_standardize, standardizer, name))
      streams.append(ds)
      stream_weights.append(weight / len(groups))
  mixed = grain.MapDataset.mix(streams, stream_weights) if len(streams) > 1 \
      else streams[0]
  augment = augment_lib.Augmenter.from_config(config.data) \
      if config.data.augment else None
  size_at = train_size_schedule(config)

  def prepare(index, example):  # index: the example's place in the global sequence
    example = _numeric(example)
    size = size_at(index // global_batch + 1)
    if size != example['image'].shape[0]:
      example = downsize(example, size)
    if augment is not None:
      rng = np.random.default_rng([config.seed, AUGMENT_STREAM, index])
      example = augment(example, rng)
    return example

  mixed = mixed.map_with_index(prepare)
  # Global batch k = local batches k*P .. k*P+P-1 in process order.
  local = mixed.batch(global_batch // shard.count, drop_remainder=True)
  return local[shard.index::shard.count] if shard.count > 1 else local


def train_size_schedule(config) -> Callable[[int], int]:
  """step -> the slice size its batch is trained at (progressive resizing).

  `data.train_size_schedule` ((size, until_step), ...) trains the steps up to
  each `until_step` at `size`, from the `data.image_size` build, downsized;
  later steps, evaluation and prediction use `data.image_size` itself. The
  network is fully convolutional, so one set of parameters serves all sizes.
  """
  schedule = [(int(size), int(until)) for size, until in config.data.train_size_schedule]
  full, depth = int(config.data.image_size), 2 ** len(config.model.widths)
  for (size, until), previous in zip(schedule, [(0, 0)] + schedule):
    if not 0 < size < full or size % depth or until <= previous[1]:
      raise ConfigError(
          f'config.data.train_size_schedule={[list(p) for p in schedule]}: give '
          f'(size, until_step) pairs with increasing steps and sizes below '
          f'data.image_size={full} that are multiples of {depth} (the U-Net depth)')

  def size_at(step: int) -> int:
    return next((size for size, until in schedule if step <= until), full)
  return size_at


def downsize(example: dict, size: int) -> dict:
  """Image and soft mask resized (antialiased), mask nearest-neighbour."""
  example = dict(example)
  example['image'] = preprocess.resize_image(example['image'], size)
  example['mask'] = preprocess.resize_mask(example['mask'], size).astype(
      np.asarray(example['mask']).dtype)
  example['soft_mask'] = np.clip(preprocess.resize_image(example['soft_mask'], size),
                                 0.0, 1.0)
  return example


def crop_to_lungs(example: dict) -> dict:
  """Image, mask and soft mask cropped to one square around the lungs (if found)."""
  box = preprocess.lung_box(example['image'])
  if box is None:
    return example
  size = example['image'].shape[0]
  example = dict(example)
  example['image'] = preprocess.crop_to_box(example['image'], box, size)
  example['mask'] = preprocess.crop_to_box(example['mask'], box, size, is_mask=True
                                           ).astype(np.asarray(example['mask']).dtype)
  if 'soft_mask' in example:  # a pseudo label: probabilities, cropped like the image
    example['soft_mask'] = np.clip(preprocess.crop_to_box(
        example['soft_mask'], box, size), 0.0, 1.0).astype(np.float32)
  return example


def _standardize(standardizer, source_name, example):
  example = dict(example)
  example['image'] = standardizer(example['image'], source_name)
  return example


def iterate(dataset: grain.MapDataset, start_step: int, config) -> Iterator[dict]:
  """An iterator over `dataset[start_step:]` with threads (and workers) prefetching."""
  read_options = grain.ReadOptions(num_threads=max(1, config.data.prefetch),
                                   prefetch_buffer_size=max(1, config.data.prefetch))
  it_ds = dataset.slice(slice(start_step, None)).to_iter_dataset(read_options)
  if config.data.num_workers > 0:
    # grain's worker processes read absl flags; outside an absl app they are
    # unparsed, which grain treats as an error. Defaults are what we want.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=config.data.num_workers))
  return iter(it_ds)


def eval_batches(config, split: str, batch_size: int, source_name: str,
                 shard: ProcessShard = ProcessShard(),
                 max_examples: int = -1, stats: dict | None = None) -> Iterator[dict]:
  """Fixed-size batches of an evaluation split, padded with `valid` = 0.

  Every process yields the same number of batches (padding where its shard
  is shorter), so a sharded evaluation never waits on a missing batch.
  Images are standardised as in training (`stats`: `source_stats(config)`).
  """
  source = datasets.load_split(source_name, split,
                               config.data.data_dir, config.data.image_size)
  standardizer = make_standardizer(config, stats)
  total = len(source) if max_examples < 0 else min(len(source), max_examples)
  indices = np.arange(total)[shard.index::shard.count]
  per_process = -(-total // shard.count)
  num_batches = -(-per_process // batch_size)
  for b in range(num_batches):
    chunk = indices[b * batch_size:(b + 1) * batch_size]
    examples = [_with_strings(source[int(i)]) for i in chunk]
    if config.data.lung_crop:
      examples = [crop_to_lungs(e) for e in examples]
    if standardizer is not None:
      examples = [_standardize(standardizer, source_name, e) for e in examples]
    if not examples:  # this shard ran out: one dummy to pad from
      examples = [_with_strings(source[0])]
      examples[0]['valid'] = np.float32(0.0)
    while len(examples) < batch_size:
      pad = dict(examples[-1])
      pad['valid'] = np.float32(0.0)
      examples.append(pad)
    yield {key: np.stack([np.asarray(e[key]) for e in examples])
           for key in examples[0]}


def _with_strings(example: dict) -> dict:
  out = _numeric(example)
  out['source'] = str(example['source'])
  out['patient_id'] = str(example['patient_id'])
  return out
