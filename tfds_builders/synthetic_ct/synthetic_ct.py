"""TFDS builder for synthetic chest CT (see mtl_jax/data/synthetic.py)."""

from __future__ import annotations

import dataclasses

import tensorflow_datasets as tfds

from mtl_jax.data import features, synthetic


@dataclasses.dataclass
class SyntheticCtConfig(tfds.core.BuilderConfig):
  image_size: int = 128


class SyntheticCt(tfds.core.GeneratorBasedBuilder):
  """Deterministic synthetic HU slices with COVID lesion masks and class labels."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.',
                   '1.1.0': 'Segmentation cohort includes lesion-free slices.'}
  BUILDER_CONFIGS = [
      SyntheticCtConfig(name=str(s), image_size=s,
                        description=f'{s}x{s} slices, lung window -1000..400 HU')
      for s in (64, 128, 256)
  ]
  DEFAULT_SPLIT_SIZES = {'train': 2000, 'validation': 300, 'test': 300}

  def __init__(self, *, num_train: int | None = None, num_validation: int | None = None,
               num_test: int | None = None, seed: int = 0, **kwargs):
    sizes = dict(self.DEFAULT_SPLIT_SIZES)
    for split, n in (('train', num_train), ('validation', num_validation),
                     ('test', num_test)):
      if n is not None:
        sizes[split] = int(n)
    self._split_sizes, self._seed = sizes, seed
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=synthetic.__doc__,
        features=features.features_dict(self.builder_config.image_size),
        homepage='https://github.com/mtl-jax/mtl-jax',
        metadata=tfds.core.MetadataDict(seed=self._seed,
                                        split_sizes=self._split_sizes),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download: generated from the seed
    return {split: self._generate_examples(split, n)
            for split, n in self._split_sizes.items()}

  def _generate_examples(self, split, num_examples):
    yield from synthetic.generate_split(self._seed, num_examples,
                                        self.builder_config.image_size, split)
