"""Reading and validating CT inputs: 2-D slices and masks; the limits on every input.

Every reader either returns clean arrays or raises `BadInputError(reason, path)`,
so a builder can check ALL files first (`BadFiles`) and report every bad one in
one error, instead of failing on the first or silently dropping files.
NIfTI volumes and DICOM series are read by `volume_readers`, against the
limits defined here.

Limits, checked from headers BEFORE any pixel is decoded (a 140 KB PNG or a
352-byte NIfTI header can declare gigabytes: decoding first would end in a
MemoryError or a swapping machine, not in a clear refusal):

  MAX_SIDE          4096 px: no axis of an image or volume may be longer
                    (a volume's slice count included: 4096 slices of 0.3 mm
                    are 1.2 m, more than any chest CT)
  MAX_SLICE_PIXELS  16 megapixels for a 2-D slice
  MIN_SLICE_SIDE    16 px: a smaller 2-D image is not a CT slice (masks exempt)
  MAX_STUDY_BYTES   2 GiB: a study's voxels as float32, from the NIfTI header's
                    shape or, for DICOM, Rows x Columns x number of files
  SPACING_RANGE_MM  1e-3..1e3 mm: plausible voxel sizes (from the affine)
  MAX_EXTRA_BYTES   64 MiB: what a NIfTI may hold besides its voxels: header
                    extensions before them (vox_offset) and, in a .nii.gz,
                    bytes after them (bounds decompressing a gzip bomb)

Integrity: a .nii.gz is decompressed completely, so its CRC-32 and length
are checked (a flipped byte anywhere in the compressed data is an error, not
a different scan); a PNG's chunk checksums are verified; a file shorter than
its header declares, or a PNG/JPEG without its end marker, is an error.
JPEG, DICOM and .nii carry no checksum: a flipped voxel byte there cannot be
seen. Header fields and DICOM tags are
checked by `validate_nifti` and `validate_dicom` (form), the limits here (size).
"""

from __future__ import annotations

import pathlib
import warnings
import zlib

import numpy as np
from PIL import Image, ImageChops, UnidentifiedImageError

from mtl_jax.data.features import SEG_CLASS_NAMES
from mtl_jax.errors import BadInputError

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')
NIFTI_SUFFIXES = ('.nii', '.nii.gz')
MAX_SIDE = 4096
MAX_SLICE_PIXELS = 16_000_000
MIN_SLICE_SIDE = 16
MAX_STUDY_BYTES = 2 * 2**30
SPACING_RANGE_MM = (1e-3, 1e3)
MAX_EXTRA_BYTES = 64 * 2**20
BROKEN_LINK = 'broken symbolic link (target missing)'
# A screenshot from a paper may carry coloured arrows; a photograph is colour
# almost everywhere. More than this fraction of strongly coloured pixels
# (channel spread > 32 of 255) means "not a grayscale CT rendering".
MAX_COLOUR_FRACTION = 0.25
_SEG_LABELS = tuple(range(len(SEG_CLASS_NAMES)))
# How a whole file ends (PNG: the empty IEND chunk with its CRC; JPEG: EOI).
# PIL decodes a file cut inside them, so their presence is checked.
_END_MARKERS = {'PNG': b'\0\0\0\0IEND\xaeB`\x82', 'JPEG': b'\xff\xd9'}
_DECODE_ERRORS = (OSError, EOFError, ValueError, SyntaxError, zlib.error,
                  UnidentifiedImageError, Image.DecompressionBombError)


class BadFiles:
  """Collects every bad file with its reason, then raises once or records them."""

  def __init__(self, dataset: str, root):
    self.dataset, self.root, self.bad = dataset, pathlib.Path(root), {}

  def add(self, path, reason: str):
    self.bad.setdefault(self._rel(path), reason)

  def run(self, fn, *args, **kwargs):
    """fn(*args) or None if it raised BadInputError (then recorded)."""
    try:
      return fn(*args, **kwargs)
    except BadInputError as e:
      self.add(e.path or self.root, e.reason)
      return None

  def _rel(self, path) -> str:
    try:
      return str(pathlib.Path(path).relative_to(self.root))
    except ValueError:
      return str(path)

  def __len__(self):
    return len(self.bad)

  def message(self) -> str:
    lines = [f'{self.dataset}: {len(self)} bad files in {self.root} '
             '(use --skip_bad to build without them):']
    lines += [f'  {path}: {reason}' for path, reason in sorted(self.bad.items())]
    return '\n'.join(lines)

  def finish(self, skip_bad: bool) -> list:
    """Raise listing all bad files, or (skip_bad) return them as records."""
    if self.bad and not skip_bad:
      raise BadInputError(self.message())
    if self.bad:
      print(f'{self.dataset}: skipped {len(self)} bad files (recorded in the '
            "dataset's metadata as 'skipped')")
    return [{'path': p, 'reason': r} for p, r in sorted(self.bad.items())]


def is_nifti(path) -> bool:
  return str(path).lower().endswith(NIFTI_SUFFIXES)


def strip_suffix(name: str) -> str:
  """File name without .nii.gz / .png / ... (a DICOM folder name as is)."""
  for suffix in NIFTI_SUFFIXES[::-1] + IMAGE_SUFFIXES + ('.dcm',):
    if name.lower().endswith(suffix):
      return name[:-len(suffix)]
  return name


def list_files(folder, suffixes=IMAGE_SUFFIXES, bad: BadFiles | None = None) -> list:
  """Sorted data files in `folder`; other files are reported to `bad` (not dropped)."""
  out = []
  for entry in sorted(pathlib.Path(folder).iterdir()):
    if entry.name.startswith('.'):
      continue  # .DS_Store and friends are not data
    if entry.is_symlink() and not entry.exists():
      if bad is not None:
        bad.add(entry, BROKEN_LINK)
    elif entry.is_file() and entry.name.lower().endswith(tuple(suffixes)):
      out.append(entry)
    elif bad is not None:
      bad.add(entry, f'unexpected {"folder" if entry.is_dir() else "file"} '
              f'(expected {"/".join(suffixes)} files)')
  return out


def masks_without_images(mask_folder, image_folder, bad: BadFiles):
  """Report each mask in `mask_folder` whose image (same name, any suffix) is not
  in `image_folder`: a lone mask means a missing image, not a file to ignore."""
  images = {strip_suffix(p.name) for p in pathlib.Path(image_folder).iterdir()}
  for mask in sorted(pathlib.Path(mask_folder).iterdir()):
    name = strip_suffix(mask.name)
    if (not mask.name.startswith('.') and mask.name.lower().endswith(IMAGE_SUFFIXES)
        and name not in images):
      bad.add(mask, f'mask without its image (no {pathlib.Path(image_folder).name}/'
              f'{name}.* beside it)')


def require_file(path) -> pathlib.Path:
  """`path` as a Path if it exists; a plain reason (dangling link, missing) if not."""
  path = pathlib.Path(path)
  if path.is_symlink() and not path.exists():
    raise BadInputError(BROKEN_LINK, path)
  if not path.exists():
    raise BadInputError('file not found', path)
  return path


def check_image_size(width: int, height: int, path, min_side: int = 0):
  """A 2-D slice's declared size against MAX_SIDE / MAX_SLICE_PIXELS (and min_side)."""
  if max(width, height) > MAX_SIDE or width * height > MAX_SLICE_PIXELS:
    raise BadInputError(f'image is {width}x{height} px ({width * height / 1e6:.1f} '
                        f'megapixels), above the limit of {MAX_SIDE} px a side and '
                        f'{MAX_SLICE_PIXELS // 10**6} megapixels', path)
  if min(width, height) < min_side:
    raise BadInputError(f'image is {width}x{height} px, too small to be a CT slice '
                        f'(minimum {min_side} px)', path)


def check_volume_size(shape, path, what: str = 'volume'):
  """A study's declared shape against MAX_SIDE and MAX_STUDY_BYTES (float32 voxels)."""
  shape = tuple(int(n) for n in shape)
  text = 'x'.join(map(str, shape))
  if max(shape) > MAX_SIDE:
    raise BadInputError(f'{what} is {text} voxels: an axis longer than {MAX_SIDE} is '
                        'not a CT study', path)
  nbytes = 4 * int(np.prod(shape, dtype=object))
  if nbytes > MAX_STUDY_BYTES:
    raise BadInputError(f'{what} is {text} voxels, {nbytes / 2**30:.1f} GiB as float32, '
                        f'above the limit of {MAX_STUDY_BYTES / 2**30:g} GiB per study', path)


def check_spacing(spacing, path):
  low, high = SPACING_RANGE_MM
  spacing = np.asarray(spacing, np.float64)
  if not np.all((spacing >= low) & (spacing <= high)):
    raise BadInputError('voxel size ' + ' x '.join(f'{v:.4g}' for v in spacing) +
                        f' mm is implausible (expected {low:g}..{high:g} mm)', path)


def _open_image(path, min_side: int = 0) -> Image.Image:
  """Opened, size-checked (from the header, before decoding), verified and decoded."""
  path = require_file(path)
  try:
    with open(path, 'rb') as f, warnings.catch_warnings():
      warnings.simplefilter('ignore', Image.DecompressionBombWarning)
      image = Image.open(f)
      check_image_size(*image.size, path, min_side)
      if image.format in _END_MARKERS:  # (by content: some .png files are JPEGs)
        f.seek(-min(path.stat().st_size, 1 << 16), 2)
        if _END_MARKERS[image.format] not in f.read():
          raise BadInputError(f'unreadable image: truncated {image.format} (its end '
                              'marker is missing)', path)
      if image.format == 'PNG':  # every chunk's CRC: a flipped byte is an error
        image.verify()
        f.seek(0)
        image = Image.open(f)
      image.load()  # decode now: truncated files fail here, not later
    return image
  except Image.DecompressionBombError as e:
    raise BadInputError(f'image is too large ({e}); the limit is {MAX_SIDE} px a side '
                        f'and {MAX_SLICE_PIXELS // 10**6} megapixels', path) from None
  except _DECODE_ERRORS as e:
    raise _unreadable_image(e, path) from None


def _unreadable_image(error, path) -> BadInputError:
  if isinstance(error, UnidentifiedImageError):  # its text repeats the path
    return BadInputError('unreadable image (not a PNG/JPEG file, or a damaged one)', path)
  return BadInputError(f'unreadable image ({error})', path)


def image_shape(path) -> tuple:
  """(H, W) of an image from its header, size limits checked (nothing decoded)."""
  path = require_file(path)
  try:
    with Image.open(path) as image:
      check_image_size(*image.size, path)
      return image.height, image.width
  except _DECODE_ERRORS as e:
    raise _unreadable_image(e, path) from None


def read_image(path) -> np.ndarray:
  """An 8-bit grayscale slice as float32 0..255 (H, W); colour photographs are errors."""
  image = _open_image(path, MIN_SLICE_SIDE)
  if image.mode == 'P':  # a palette may hold colours: check as RGB
    image = image.convert('RGB')
  if image.mode in ('L', '1', 'LA'):
    return np.asarray(image.convert('L'), np.float32)
  if image.mode not in ('RGB', 'RGBA'):
    raise BadInputError(f'unsupported image mode {image.mode} (expected 8-bit '
                        'grayscale or RGB with equal channels)', path)
  red, green, blue = image.convert('RGB').split()
  if (ImageChops.difference(red, green).getbbox() is None and
      ImageChops.difference(green, blue).getbbox() is None):
    return np.asarray(red, np.float32)  # gray stored as RGB
  rgb = np.asarray(image.convert('RGB'), np.int16)
  colourful = float(np.mean(rgb.max(-1) - rgb.min(-1) > 32))
  if colourful > MAX_COLOUR_FRACTION:
    raise BadInputError(f'colour image ({colourful:.0%} of pixels coloured), not '
                        'a grayscale CT slice', path)
  return np.asarray(image.convert('RGB').convert('L'), np.float32)


def read_soft_mask(path) -> np.ndarray:
  """A model-made lesion probability mask (grayscale 0..255) as float32 in [0, 1]."""
  image = _open_image(path)
  if image.mode not in ('L', '1'):
    raise BadInputError(f'soft mask has mode {image.mode} (expected a grayscale '
                        'PNG of lesion probabilities 0..255)', path)
  return np.asarray(image.convert('L'), np.float32) / 255.0


def read_mask(path) -> np.ndarray:
  """A PNG lesion mask as uint8 labels 0 bg / 1 GGO / 2 consolidation.

  Palette PNG -> its indices; grayscale {0,255} (binary lesion) -> {0,1};
  grayscale already in {0,1,2} -> as is.
  """
  image = _open_image(path)
  if image.mode == 'P':
    return check_labels(np.asarray(image), path)
  if image.mode not in ('L', '1'):
    raise BadInputError(f'mask has mode {image.mode} (expected a palette or '
                        'grayscale PNG)', path)
  values = np.asarray(image.convert('L'))
  present = set(np.unique(values).tolist())
  if present <= {0, 255}:
    return (values > 0).astype(np.uint8)
  return check_labels(values, path)


def check_labels(mask, path) -> np.ndarray:
  mask = np.asarray(mask)
  if not np.all(np.isfinite(mask)) or not np.all(mask == np.round(mask)):
    raise BadInputError('mask has non-integer values', path)
  bad = sorted(set(np.unique(mask).astype(int).tolist()) - set(_SEG_LABELS))
  if bad:
    raise BadInputError(f'unexpected mask labels {bad[:8]} (expected 0 bg, '
                        '1 GGO, 2 consolidation)', path)
  return mask.astype(np.uint8)


def map_labels(mask, mapping, path) -> np.ndarray:
  """Volume mask labels -> spec labels: 'labels' (0/1/2 as is), 'nonzero' (>0 -> 1)
  or a dict {raw: label} that must cover every value present."""
  mask = np.asarray(mask)
  if not np.all(mask == np.round(mask)):
    raise BadInputError('mask has non-integer values', path)
  if mapping == 'nonzero':
    return (mask > 0).astype(np.uint8)
  if mapping == 'labels':
    return check_labels(mask, path)
  values = np.unique(mask).astype(int)
  unknown = sorted(set(values.tolist()) - set(mapping))
  if unknown:
    raise BadInputError(f'unexpected mask labels {unknown[:8]} (expected '
                        f'{sorted(mapping)})', path)
  lut = np.zeros(int(values.max()) + 1, np.uint8)
  for raw, new in mapping.items():
    if raw <= values.max():
      lut[raw] = new
  return lut[mask.astype(np.int64)]
