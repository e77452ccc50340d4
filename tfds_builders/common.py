"""The shared base of the real-data CT builders, so each source's builder is small.

A builder only says how to find its inputs (`_find_units`: files or volumes
with label, patient id and, optionally, a preset split) and how to split them.
This base then (1) resolves the manual dir (default `$MTL_MANUAL_DIR/<folder>`:
where the releases are is a setting, never a path baked into the package), (2) reads and validates EVERY input before writing anything
and raises one `BadInputError` listing every bad file (or, with
`skip_bad=True`, leaves them out and records them in the metadata), (3) splits
at patient/volume level, deterministically, and (4) writes slices in the one
feature spec: [0, 1] image (HU -> `window_hu`, the lung window unless the build
says otherwise; 8-bit -> /255), square-padded, resized; masks with nearest
neighbour; what it did goes into the metadata (`preprocessing`).
"""

from __future__ import annotations

import abc
import collections
import dataclasses
import hashlib
import os
import pathlib
from typing import NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from mtl_jax.data import features, preprocess, readers, volume_readers
from mtl_jax.errors import ConfigError
from mtl_jax.data.readers import BadInputError

# The folder that holds each source's public release, one subfolder per
# source (its DEFAULT_FOLDER: medseg_covid/, ucsd_covid_ct/, ...; docs/data.md):
# a setting of the machine, read when a build is given no --manual_dir.
MANUAL_DIR_ENV = 'MTL_MANUAL_DIR'
SIZES = (64, 128, 256)
DEFAULT_IMAGE_SIZE = 256  # what build-data stores without --image_size
COVID, NORMAL, OTHER = features.COVID, features.NORMAL, features.OTHER
LUNG_WINDOW_FRACTION = 0.05  # lung_slices_only: >= 5% of pixels in -950..-500 HU


@dataclasses.dataclass
class SizeConfig(tfds.core.BuilderConfig):
  image_size: int = DEFAULT_IMAGE_SIZE


def size_configs() -> list:
  return [SizeConfig(name=str(s), image_size=s, description=f'{s}x{s} slices')
          for s in SIZES]


@dataclasses.dataclass(frozen=True)
class Unit:
  """One input: a 2-D slice file, a volume, or one slice of a volume."""
  key: str  # unique and stable (relative path), orders and names examples
  patient_id: str
  image: pathlib.Path  # image file, NIfTI file or DICOM series folder
  mask: pathlib.Path | None = None
  label: int | None = None
  label_set: tuple | None = None
  split: str | None = None  # preset (official lists); else the split rule decides
  slice_index: int | None = None  # just this slice of a volume


class Loaded(NamedTuple):
  images: np.ndarray  # (slices, H, W) float32 in [0, 1]
  masks: np.ndarray | None  # (slices, H, W) uint8 labels
  spacing: np.ndarray | None  # (row, col) mm, volumes only
  slices: list  # the slice indices to write
  intensity: str  # 'hu' or '8bit'
  soft: np.ndarray | None = None  # (slices, H, W) float32 pseudo-label probabilities


def fraction_counts(n: int, fractions: dict) -> dict:
  """Groups per non-train split: round(f * n), at least 1 when there are enough."""
  counts = {s: int(np.floor(f * n + 0.5)) for s, f in fractions.items()}
  if n > len(fractions):
    counts = {s: max(c, 1 if fractions[s] > 0 else 0) for s, c in counts.items()}
  while sum(counts.values()) >= n and any(counts.values()):  # keep one for train
    counts[max(counts, key=counts.get)] -= 1
  return counts


def split_by_permutation(groups, fractions: dict, seed: int, fold: int = 0) -> dict:
  """{group: split}: a seeded permutation of the sorted groups, exact counts.

  `fold` k rotates the permutation by k times the held-out count, so folds
  hold out disjoint groups (cross-validation: 20% of 50 slices held out,
  folds 0-4 cover every slice once; where the count is not a multiple of
  the held-out size, the remainder is never held out).
  """
  groups = sorted(set(groups))
  order = np.random.default_rng(seed).permutation(len(groups))
  held = sum(fraction_counts(len(groups), fractions).values())
  if fold and groups and (fold + 1) * held > len(groups):
    raise ConfigError(f'--fold {fold}: only {len(groups) // max(held, 1)} disjoint folds '
                      f'of {held} held-out groups fit in {len(groups)} (folds 0..'
                      f'{len(groups) // max(held, 1) - 1})')
  order = np.roll(order, -fold * held)
  out, start = {}, 0
  for split, count in fraction_counts(len(groups), fractions).items():
    for i in order[start:start + count]:
      out[groups[i]] = split
    start += count
  for i in order[start:]:
    out[groups[i]] = 'train'
  return out


def split_by_hash(names, fractions: dict, seed: int) -> dict:
  """{name: split} from a seeded hash of each name: stable if files are added."""
  out = {}
  for name in names:
    u = int(hashlib.sha256(f'{seed}/{name}'.encode()).hexdigest()[:12], 16) / 16**12
    out[name], edge = 'train', 0.0
    for split, f in fractions.items():
      edge += f
      if u < edge:
        out[name] = split
        break
  return out


def class_folder_units(root, folders: dict, bad, patient_id=None,
                       required=()) -> list:
  """Units from `root/<folder>/*.{png,jpg}` with a label per folder.

  folders: {folder: label int or label-set tuple}. Unknown subfolders and
  stray files are reported as bad; a missing required folder is a layout error.
  """
  root = pathlib.Path(root)
  missing = [f for f in required if not (root / f).is_dir()]
  if missing:
    raise BadInputError(f'missing folders {", ".join(missing)}')
  units = []
  for entry in sorted(root.iterdir()):
    if entry.name.startswith('.') or entry.is_file() and entry.name.endswith(
        ('.md', '.txt', '.csv')):
      continue  # README / notes beside the data
    if entry.name not in folders:
      bad.add(entry, f'unexpected {"folder" if entry.is_dir() else "file"} '
              f'(expected folders {", ".join(folders)})')
      continue
    label = folders[entry.name]
    files = readers.list_files(entry, bad=bad)
    if not files:
      bad.add(entry, 'empty folder')
    for f in files:
      rel = f'{entry.name}/{f.name}'
      units.append(Unit(
          key=rel, image=f,
          patient_id=patient_id(f) if patient_id else readers.strip_suffix(rel),
          label=label if isinstance(label, int) else None,
          label_set=label if isinstance(label, tuple) else None))
  return units


class SliceFolderBuilder(tfds.core.GeneratorBasedBuilder):
  """Base: validate all inputs, split by patient, write spec slices."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = size_configs()
  DEFAULT_FOLDER: str | None = None  # under $MTL_MANUAL_DIR when manual_dir is None
  MANUAL_DOWNLOAD_INSTRUCTIONS = ''  # the expected layout, shown in errors
  MASK_SOFT = False  # 2-D masks are model probabilities: `soft_mask`, not `mask`
  VOLUME_MASK_MAP: object = 'labels'  # readers.map_labels mapping
  SPLIT_FRACTIONS = {'validation': 0.2}
  SPLIT_BY = 'patient'  # 'patient' (seeded permutation) or 'hash' (of unit key)
  SPLIT_RULE = ''  # for the metadata

  def __init__(self, *, skip_bad: bool = False, seed: int = 0, fold: int = 0,
               max_examples_per_split: int | None = None,
               every_nth_slice: int = 1, lung_slices_only: bool = False,
               window_hu=preprocess.LUNG_WINDOW, **kwargs):
    if every_nth_slice < 1:
      raise ValueError(f'every_nth_slice must be >= 1, got {every_nth_slice}')
    self._skip_bad, self._seed, self._fold = bool(skip_bad), int(seed), int(fold)
    self._max_examples = max_examples_per_split
    self._every_nth, self._lung_only = int(every_nth_slice), bool(lung_slices_only)
    self._manual_path, self._cache = None, (None, None)
    self._notes, self._split_rule = [], self.SPLIT_RULE
    self._volumes_8bit, self._kinds = set(), set()
    self._window = tuple(float(v) for v in window_hu)
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=(self.__doc__ or '').strip(),
        features=features.features_dict(self.builder_config.image_size),
        homepage='https://github.com/mtl-jax/mtl-jax',
        metadata=tfds.core.MetadataDict())

  # -- hooks for each source -------------------------------------------------

  @abc.abstractmethod
  def _find_units(self, root: pathlib.Path, bad: readers.BadFiles) -> list:
    """All inputs under root (report unusable ones to `bad`), or BadInputError."""

  def _assign_splits(self, units: list) -> dict:
    """{unit.key: split}: preset splits, else SPLIT_BY with SPLIT_FRACTIONS."""
    if self._fold and (all(u.split for u in units) or self.SPLIT_BY == 'hash'):
      raise ConfigError(f'--fold {self._fold}: {self.name} is split '
                        f'{"by its own lists" if all(u.split for u in units) else "by a hash of file names"}, '
                        'not by a seeded permutation; cross-validation folds are for '
                        'permutation-split datasets (e.g. medseg_covid)')
    if all(u.split for u in units):
      return {u.key: u.split for u in units}
    if self.SPLIT_BY == 'hash':
      return split_by_hash([u.key for u in units], self.SPLIT_FRACTIONS, self._seed)
    by_patient = split_by_permutation([u.patient_id for u in units],
                                      self.SPLIT_FRACTIONS, self._seed, self._fold)
    return {u.key: by_patient[u.patient_id] for u in units}

  def _source_name(self) -> str:
    return self.name

  def _options(self) -> dict:
    return {}

  # -- the shared pipeline ---------------------------------------------------

  def download_and_prepare(self, *, download_config=None, **kwargs):
    """Default manual dir $MTL_MANUAL_DIR/<DEFAULT_FOLDER> when none is given."""
    config = download_config or tfds.download.DownloadConfig()
    root = os.environ.get(MANUAL_DIR_ENV)
    if config.manual_dir is None and self.DEFAULT_FOLDER and root:
      config = dataclasses.replace(config,
                                   manual_dir=str(pathlib.Path(root) / self.DEFAULT_FOLDER))
    self._manual_path = config.manual_dir
    return super().download_and_prepare(download_config=config, **kwargs)

  def layout_error(self, root, what: str) -> BadInputError:
    return BadInputError(f'{self.name}: {what} in {root}; expected layout:\n'
                         f'{self.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}')

  def _root(self, dl_manager) -> pathlib.Path:
    if self._manual_path is None:
      where = (f' (--manual_dir, or {MANUAL_DIR_ENV} set to the folder that holds '
               f'{self.DEFAULT_FOLDER}/)' if self.DEFAULT_FOLDER else ' (--manual_dir)')
      raise self.layout_error('(none)', 'no manual_dir given' + where)
    try:
      return pathlib.Path(str(dl_manager.manual_dir))
    except AssertionError:  # tfds: missing or empty
      raise self.layout_error(self._manual_path, 'folder missing or empty') from None

  def _split_generators(self, dl_manager):
    root = self._root(dl_manager)
    bad = readers.BadFiles(self.name, root)
    try:
      units = self._find_units(root, bad)
    except BadInputError as e:
      raise self.layout_error(root, e.reason) from None
    if not units and not bad.bad:
      raise self.layout_error(root, 'no input files found')
    if len({u.key for u in units}) != len(units):
      raise AssertionError(f'{self.name}: duplicate unit keys')
    checked = {u.key: bad.run(self._check, u) for u in units}
    skipped = bad.finish(self._skip_bad)
    # Split before dropping bad files: skipping one never moves another.
    split_of = self._assign_splits(units) if units else {}
    units = [u for u in units if checked.get(u.key) is not None]
    if not units:
      raise self.layout_error(root, 'no usable input files')
    plan = collections.defaultdict(list)
    for unit in sorted(units, key=lambda u: u.key):
      plan[split_of[unit.key]].extend((unit, k) for k in checked[unit.key])
    if self._max_examples is not None:
      plan = {s: items[:self._max_examples] for s, items in plan.items()}
    plan = {s: items for s, items in plan.items() if items}
    self._record(root, units, checked, plan, skipped)
    return {split: self._generate_examples(items) for split, items in sorted(plan.items())}

  def _record(self, root, units, checked, plan, skipped):
    counts = {s: {'slices': len(items),
                  'patients': len({u.patient_id for u, _ in items}),
                  'files': len({u.image for u, _ in items})}
              for s, items in plan.items()}
    self.info.metadata.update({
        'source': self._source_name(), 'manual_dir': str(root),
        'split_rule': self._split_rule, 'seed': self._seed, 'fold': self._fold,
        'splits': counts,
        'skipped': skipped, 'notes': self._notes,
        'no_selected_slices': sorted(u.key for u in units if not checked[u.key]),
        'volumes_8bit': sorted(self._volumes_8bit),  # 0..255 volumes, not HU
        'preprocessing': preprocess.rendering_record(
            self._window, self.builder_config.image_size, self._kinds),
        'options': {'every_nth_slice': self._every_nth,
                    'lung_slices_only': self._lung_only,
                    'max_examples_per_split': self._max_examples,
                    **self._options()},
    })

  def _check(self, unit: Unit) -> list:
    """Read and validate a unit; its slice indices to write (BadInputError if bad)."""
    loaded = self._load(unit)
    if loaded.intensity == '8bit' and loaded.spacing is not None:
      self._volumes_8bit.add(unit.image.name)
    if loaded.slices:
      self._kinds.add(loaded.intensity)
    return loaded.slices

  def _load(self, unit: Unit) -> Loaded:
    """1-entry cache: consecutive units often share a volume (slices of tr_im)."""
    key = (unit.image, unit.mask)
    if self._cache[0] != key:
      try:
        self._cache = (key, self._read(unit.image, unit.mask))
      except BadInputError as e:
        self._cache = (key, e)
    loaded = self._cache[1]
    if isinstance(loaded, BadInputError):
      raise loaded
    if unit.slice_index is None:
      return loaded
    if not 0 <= unit.slice_index < len(loaded.images):
      raise BadInputError(f'no slice {unit.slice_index} (volume has '
                          f'{len(loaded.images)})', unit.image)
    return loaded._replace(slices=[unit.slice_index])

  def _read(self, image, mask) -> Loaded:
    if not (readers.is_nifti(image) or image.is_dir()):
      img = preprocess.scale_8bit(readers.read_image(image))[None]
      masks = None
      if mask is not None:
        read = readers.read_soft_mask if self.MASK_SOFT else readers.read_mask
        masks = read(mask)[None]
        if masks.shape != img.shape:
          raise BadInputError(f'mask size {masks.shape[1:]} does not match image '
                              f'{img.shape[1:]} ({image.name})', mask)
      if self.MASK_SOFT:
        return Loaded(img, None, None, [0], '8bit', soft=masks)
      return Loaded(img, masks, None, [0], '8bit')
    volume, spacing, affine = volume_readers.read_volume(image)
    kind = volume_readers.intensity_kind(volume, image)
    masks = None
    if mask is not None:
      mvol, _, maffine = volume_readers.read_volume(mask)
      if not volume_readers.same_geometry(volume.shape, affine, mvol.shape, maffine):
        raise BadInputError(f'mask geometry {mvol.shape} does not match volume '
                            f'{volume.shape} ({image.name}: shape and affine '
                            'must agree)', mask)
      masks = volume_readers.axial_slices(
          readers.map_labels(mvol, self.VOLUME_MASK_MAP, mask))
    scaled = (preprocess.window_hu(volume, *self._window) if kind == 'hu'
              else preprocess.scale_8bit(volume))
    images = volume_readers.axial_slices(scaled)
    slices = list(range(0, len(images), self._every_nth))
    if self._lung_only and kind == 'hu':
      lung = (preprocess.window_hu(-950, *self._window),
              preprocess.window_hu(-500, *self._window))
      slices = [k for k in slices if np.mean((images[k] > lung[0]) &
                                             (images[k] < lung[1])) >= LUNG_WINDOW_FRACTION]
    return Loaded(images, masks, np.array([spacing[1], spacing[0]], np.float32),
                  slices, kind)

  def _generate_examples(self, items):  # pylint: disable=arguments-differ
    size = self.builder_config.image_size
    for unit, k in items:
      loaded = self._load(unit)
      side = max(loaded.images[k].shape)
      image = preprocess.square_image(loaded.images[k], size)
      mask = soft = None
      if loaded.masks is not None:
        mask = preprocess.resize_mask(preprocess.square_pad(loaded.masks[k]), size)
      if loaded.soft is not None:  # a pseudo label: probabilities, resized bilinearly
        soft = preprocess.square_image(loaded.soft[k], size)
      spacing = None if loaded.spacing is None else loaded.spacing * side / size
      yield f'{unit.key}#{k}', features.make_example(
          image, mask, unit.label, unit.label_set, patient_id=unit.patient_id,
          source=self.name, spacing=spacing, soft_mask=soft)
