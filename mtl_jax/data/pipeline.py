"""grain input pipelines: weighted mixing of sources, per-process shards, resume.

The training stream is a random-access `grain.MapDataset` of *batches*:
batch `k` is a pure function of (config, seed, process, k). Resuming at step
`k` is therefore `dataset[k:]`, and a resumed run sees exactly the batches the
interrupted one would have seen; the iterator state saved with a checkpoint is
just that step (plus grain's own state, for the record).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import grain
import numpy as np
from absl import flags

from mtl_jax.data import augment as augment_lib
from mtl_jax.data import datasets

# Keys the train step consumes; strings stay on the host.
NUMERIC_KEYS = ('image', 'mask', 'has_mask', 'label', 'label_set', 'has_label')


@dataclasses.dataclass(frozen=True)
class ProcessShard:
  """Which slice of the data this host reads (multi-host ready)."""
  index: int = 0
  count: int = 1


def _numeric(example: dict) -> dict:
  out = {key: example[key] for key in NUMERIC_KEYS}
  out['valid'] = np.float32(1.0)
  return out


def train_dataset(config, shard: ProcessShard = ProcessShard()) -> grain.MapDataset:
  """Infinite MapDataset of this process's local training batches."""
  names = list(config.data.sources.keys())
  weights = [float(config.data.sources[name]) for name in names]
  if not names or min(weights) <= 0:
    raise ValueError('config.data.sources must map at least one dataset name '
                     f'to a positive weight, got {dict(config.data.sources)}')
  global_batch = config.train.global_batch_size
  if global_batch % shard.count:
    raise ValueError(f'train.global_batch_size={global_batch} is not divisible '
                     f'by the number of processes ({shard.count})')
  per_source = []
  for i, name in enumerate(names):
    source = datasets.load_split(name, 'train', config.data.data_dir,
                                 config.data.image_size)
    ds = grain.MapDataset.source(source)
    ds = ds[shard.index::shard.count]  # shard before mixing keeps the weights
    per_source.append(ds.shuffle(seed=config.seed + 1000 * i).repeat())
  mixed = grain.MapDataset.mix(per_source, weights) if len(per_source) > 1 \
      else per_source[0]
  augment = augment_lib.Augmenter.from_config(config.data) \
      if config.data.augment else None

  def prepare(index, example):
    example = _numeric(example)
    if augment is not None:
      rng = np.random.default_rng([config.seed, shard.index, index])
      example = augment(example, rng)
    return example

  mixed = mixed.map_with_index(prepare)
  return mixed.batch(global_batch // shard.count, drop_remainder=True)


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
                 max_examples: int = -1) -> Iterator[dict]:
  """Fixed-size batches of an evaluation split, padded with `valid` = 0.

  Every process yields the same number of batches (padding where its shard
  is shorter), so a sharded evaluation never waits on a missing batch.
  """
  source = datasets.load_split(source_name, split,
                               config.data.data_dir, config.data.image_size)
  total = len(source) if max_examples < 0 else min(len(source), max_examples)
  indices = np.arange(total)[shard.index::shard.count]
  per_process = -(-total // shard.count)
  num_batches = -(-per_process // batch_size)
  for b in range(num_batches):
    chunk = indices[b * batch_size:(b + 1) * batch_size]
    examples = [_with_strings(source[int(i)]) for i in chunk]
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
