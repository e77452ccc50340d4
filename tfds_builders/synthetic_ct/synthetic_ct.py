"""TFDS builder for synthetic chest CT (see mtl_jax/data/synthetic.py).

Nothing is downloaded: every split is generated from a seed. Build without
TensorFlow through `mtl-jax build-data synthetic_ct --data_dir DIR` (or
`tfds_builders.registry.build_dataset`), which writes array_record files.
"""

from __future__ import annotations

import dataclasses

import tensorflow_datasets as tfds

from mtl_jax.data import features, preprocess, synthetic

DEFAULT_SPLIT_SIZES = {'train': 2000, 'validation': 300, 'test': 300}


@dataclasses.dataclass
class SyntheticCtConfig(tfds.core.BuilderConfig):
  """One stored image size; split sizes and the seed are part of the config."""
  image_size: int = 128
  num_train: int = DEFAULT_SPLIT_SIZES['train']
  num_validation: int = DEFAULT_SPLIT_SIZES['validation']
  num_test: int = DEFAULT_SPLIT_SIZES['test']
  seed: int = 0


class SyntheticCt(tfds.core.GeneratorBasedBuilder):
  """Deterministic synthetic HU slices with COVID lesion masks and class labels."""
  # For the model card (mtl_jax/model_card.py) and docs/data.md.
  SOURCE = 'synthetic HU slices made by mtl-jax'
  LICENCE = 'generated; no patient data'

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.',
                   '1.1.0': 'Realistic anatomy; the segmentation cohort includes '
                            'lesion-free slices with empty masks.'}
  BUILDER_CONFIGS = [
      SyntheticCtConfig(
          name=str(s), image_size=s,
          description=(f'{s}x{s} axial slices, lung window -1000..400 HU scaled '
                       'to [0, 1]; train mixes a segmentation cohort and a '
                       'classification cohort with partial labels, '
                       'validation/test are fully labelled.'))
      for s in (64, 128, 256)
  ]

  def __init__(self, *, num_train: int | None = None, num_validation: int | None = None,
               num_test: int | None = None, seed: int | None = None,
               window_hu=preprocess.LUNG_WINDOW, **kwargs):
    """Keyword overrides of the config's split sizes / seed (None: keep), and
    the HU window the slices are rendered with."""
    self._window = tuple(float(v) for v in window_hu)
    self._overrides = {k: int(v) for k, v in (
        ('num_train', num_train), ('num_validation', num_validation),
        ('num_test', num_test), ('seed', seed)) if v is not None}
    for key, value in self._overrides.items():
      if key != 'seed' and value < 1:
        raise ValueError(f'{key} must be at least 1, got {value}')
    super().__init__(**kwargs)

  def _setting(self, key: str) -> int:
    return self._overrides.get(key, getattr(self.builder_config, key))

  @property
  def split_sizes(self) -> dict:
    return {split: self._setting(f'num_{split}') for split in DEFAULT_SPLIT_SIZES}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=synthetic.__doc__,
        features=features.features_dict(self.builder_config.image_size),
        homepage='https://doi.org/10.1016/j.compbiomed.2020.104037',
        citation='Amyar et al., Multi-task deep learning based CT imaging analysis '
                 'for COVID-19 pneumonia: classification and segmentation. '
                 'Comput Biol Med 126:104037 (2020).',
        metadata=tfds.core.MetadataDict(
            seed=self._setting('seed'), split_sizes=self.split_sizes,
            preprocessing=preprocess.rendering_record(
                self._window, self.builder_config.image_size, ['hu'])),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download: generated from the seed
    return {split: self._generate_examples(split, n)
            for split, n in self.split_sizes.items()}

  def _generate_examples(self, split, num_examples):
    yield from synthetic.generate_split(self._setting('seed'), num_examples,
                                        self.builder_config.image_size, split,
                                        window=self._window)
